"""The preamble every segmentation loss in :mod:`common.losses` shares.

MONAI repeats the same activation → one-hot → drop-background steps in each of ``DiceLoss``,
``GeneralizedDiceLoss`` and ``TverskyLoss``; here they live once.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from monai.networks import one_hot


def validate_activation(sigmoid: bool, softmax: bool, other_act: Callable | None) -> None:
    """Reject more than one activation, or a non-callable ``other_act``.

    Raises:
        TypeError: ``other_act`` is neither None nor callable.
        ValueError: more than one of ``sigmoid``, ``softmax``, ``other_act`` is set.
    """
    if other_act is not None and not callable(other_act):
        raise TypeError(f"other_act must be None or callable but is {type(other_act).__name__}.")
    if int(sigmoid) + int(softmax) + int(other_act is not None) > 1:
        raise ValueError("Incompatible values: more than 1 of [sigmoid=True, softmax=True, other_act is not None].")


def prepare_prediction_and_target(
    input: torch.Tensor,
    target: torch.Tensor,
    include_background: bool,
    to_onehot_y: bool,
    sigmoid: bool,
    softmax: bool,
    other_act: Callable | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn network output and ground truth into matching probability / indicator tensors.

    Args:
        input: the network output, shape BNH[WD].
        target: the ground truth, shape BNH[WD], or B1H[WD] with ``to_onehot_y=True``.

    Returns:
        ``(probabilities, target)``, both BCH[WD] with the same shape.

    Raises:
        ValueError: fewer than three dimensions, or shapes that do not match after one-hot encoding.
    """
    if input.ndim < 3:
        raise ValueError(f"input must have shape BNH[WD] (at least 3 dimensions), got {tuple(input.shape)}.")
    n_pred_ch = input.shape[1]
    if sigmoid:
        input = torch.sigmoid(input)
    if softmax:
        if n_pred_ch == 1:
            warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=3)
        else:
            input = torch.softmax(input, 1)
    if other_act is not None:
        input = other_act(input)
    if to_onehot_y:
        if n_pred_ch == 1:
            warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=3)
        else:
            target = one_hot(target, num_classes=n_pred_ch)
    if not include_background:
        if n_pred_ch == 1:
            warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=3)
        else:
            target = target[:, 1:]
            input = input[:, 1:]
    if target.shape != input.shape:
        raise ValueError(f"ground truth has different shape ({tuple(target.shape)}) from input ({tuple(input.shape)})")
    return input, target.to(input.dtype)
