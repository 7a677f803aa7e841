"""The losses every bundle takes from one place.

Dice, cross-entropy and focal losses are MONAI's own (re-exported, not re-implemented); the weighted
sensitivity-specificity loss of Brosch et al. (which MONAI lacks) and the configurable weighted sum are ours.
"""

from __future__ import annotations

from monai.losses import DiceCELoss, DiceLoss, FocalLoss
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss

from common.losses.compound import CompoundLoss
from common.losses.sensitivity_specificity import SensitivitySpecificityLoss, SSLoss

__all__ = [
    "BCEWithLogitsLoss",
    "CompoundLoss",
    "CrossEntropyLoss",
    "DiceCELoss",
    "DiceLoss",
    "FocalLoss",
    "SSLoss",
    "SensitivitySpecificityLoss",
]
