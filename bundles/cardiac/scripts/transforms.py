"""Cardiac transforms: the deterministic preprocessing of a cine-MRI frame, written once.

:func:`preprocessing` is the one definition of the steps that train, validate, evaluate and inference all use, so
they cannot drift apart: training resamples the label with the image, validation and evaluation load it in its own
grid (Dice and the clinical volumes are measured there, on the prediction inverted by ``Invertd``), inference has
none. The random augmentation is listed in ``train.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import (
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    ResizeWithPadOrCropd,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    Transform,
)

from common.geometry import NiftiReader


def preprocessing(pixdim: Sequence[float], roi_size: Sequence[int], with_label: bool = True,
                  resample_label: bool = True) -> list[Transform]:
    """Load (``common.geometry.NiftiReader``), channel first, resample in-plane, window the 1st-99th intensity
    percentiles to [0, 1], pad or crop in-plane to ``roi_size``, float32.

    Args:
        pixdim: target voxel size in mm, ``[x, y, z]``; ``-1`` keeps that axis (the slice spacing by default).
        roi_size: in-plane size ``[x, y]`` in voxels after resampling (the ``SliceInferer`` window); the slice axis
            keeps its length.
        with_label: also load ``label`` (the ACDC label map 0 background, 1 RV, 2 MYO, 3 LV); inference has none.
        resample_label: resample, pad and crop the label with the image (training, nearest neighbour); False keeps it
            in its own grid (validation and evaluation: metrics in the input's geometry).

    Returns:
        the transforms, for a ``Compose``: ``image`` becomes a 1 x X x Y x Z float32 ``MetaTensor`` with
        ``X, Y = roi_size``; every spatial step is invertible, so ``Invertd`` brings a prediction back to the input's
        grid.

    Raises:
        ValueError: ``pixdim`` not three values or ``roi_size`` not two.
    """
    if len(pixdim) != 3 or len(roi_size) != 2:
        raise ValueError(f"pixdim needs 3 values (mm, -1 keeps an axis) and roi_size 2 (voxels), got {pixdim} and "
                         f"{roi_size}.")
    loaded = ["image", "label"] if with_label else ["image"]
    spatial = ["image", "label"] if with_label and resample_label else ["image"]
    return [
        LoadImaged(keys=loaded, reader=NiftiReader(), image_only=True),
        EnsureChannelFirstd(keys=loaded),
        Spacingd(keys=spatial, pixdim=pixdim, mode=["bilinear", "nearest"][: len(spatial)]),
        ScaleIntensityRangePercentilesd(keys="image", lower=1, upper=99, b_min=0.0, b_max=1.0, clip=True),
        ResizeWithPadOrCropd(keys=spatial, spatial_size=[*roi_size, -1]),
        EnsureTyped(keys=spatial, dtype=torch.float32),
    ]
