"""Freeze presets of the brain bundle's network (MONAI's ``SegResNet``, built directly from train.json).

``FREEZE_PRESETS`` maps the names accepted by train.json's ``freeze`` (docs/fine-tuning.md) to parameter-name prefixes,
or to a function of the network giving them: ``"encoder"`` is SegResNet's initial convolution and down-sampling
stages (``convInit``, ``down_layers``), the part that a Model Zoo ``brats_mri_segmentation`` checkpoint shares with
any other MRI segmentation task; the up path and the output convolution stay trainable.
"""

from __future__ import annotations

from common.transfer import segresnet_encoder

FREEZE_PRESETS = {"encoder": segresnet_encoder}
