"""Freeze presets of this bundle's network (MONAI's ``UNet``, built directly from train.json).

``FREEZE_PRESETS`` maps the names accepted by train.json's ``freeze`` (docs/fine-tuning.md) to parameter-name prefixes,
or to a function of the network giving them: ``"encoder"`` is the UNet's down-sampling block of every level and its
bottom block (``model.0``, ``model.1.submodule.0``, ...; see ``common.transfer.unet_encoder``, which depends on the
number of levels); the up path and the output block stay trainable.
"""

from __future__ import annotations

from common.transfer import unet_encoder

FREEZE_PRESETS = {"encoder": unet_encoder}
