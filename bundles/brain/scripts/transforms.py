"""Brain transforms: the deterministic preprocessing shared by every workflow, and regions → BraTS labels.

The forward direction (labels → regions TC = 1∪4, WT = 1∪2∪4, ET = 4) is MONAI's
``ConvertToMultiChannelBasedOnBratsClassesd``; this module adds its inverse. :func:`preprocessing` is the one
definition of the deterministic steps that train, validate, evaluate and inference all use (the last two without the
label), so they cannot drift apart; the random augmentation is listed in ``train.json``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    ConvertToMultiChannelBasedOnBratsClassesd,
    CropForegroundd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    Spacingd,
    Transform,
)

from common.geometry import NiftiReader

REGIONS = ("TC", "WT", "ET")


def preprocessing(pixdim: Sequence[float], with_label: bool = True) -> list[Transform]:
    """The deterministic preprocessing: load, regions, RAS, resample, foreground crop, per-channel z-score.

    Files are read with ``common.geometry.NiftiReader``: the affine is the header's sform when its code is set, else
    the qform (nibabel's rule), the geometry the dataset check, the metrics and the written prediction use too.

    Args:
        pixdim: target voxel size in mm (the network's grid).
        with_label: also load ``label`` (a BraTS label map) and turn it into the region channels TC, WT, ET.

    Returns:
        the transforms, for a ``Compose``: ``image`` becomes 4HWD (T1, T1ce, T2, FLAIR) and ``label`` 3HWD. Every
        spatial step is invertible, so ``Invertd`` brings a prediction back to the input's grid.
    """
    if len(pixdim) != 3 or not all(float(p) > 0 for p in pixdim):
        raise ValueError(f"pixdim must be three positive voxel sizes in mm, got {pixdim}.")
    keys = ["image", "label"] if with_label else ["image"]
    modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
    # one geometry per file (common.geometry): the same affine as the checks, metrics and the written prediction
    steps: list[Transform] = [LoadImaged(keys=keys, reader=NiftiReader(), image_only=True, ensure_channel_first=True)]
    if with_label:
        steps.append(ConvertToMultiChannelBasedOnBratsClassesd(keys="label"))
    steps += [
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=[float(p) for p in pixdim], mode=modes),
        CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        EnsureTyped(keys=keys, dtype=torch.float32),
    ]
    return steps


class RegionsToBratsLabels(Transform):
    """Turn binary region channels ``[TC, WT, ET]`` (3HWD) into a BraTS label map (1HWD): 0, 1 NCR, 2 ED, 4 ET.

    Nested regions are resolved from the outside in, as in the BraTS challenge post-processing: a voxel in WT is
    oedema (2), in TC necrotic core (1), in ET enhancing tumour (4). So ET wins over TC and TC over WT, and a region
    predicted outside its parent still counts as tumour. Exact inverse of ``ConvertToMultiChannelBasedOnBratsClasses``
    on any BraTS label map.
    """

    def __init__(self, et_label: int = 4) -> None:
        if et_label in (0, 1, 2):
            raise ValueError(f"et_label cannot be 0, 1 or 2 (reserved), got {et_label}.")
        self.et_label = et_label

    def __call__(self, regions: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        if regions.shape[0] != 3:
            raise ValueError(f"expected 3 region channels (TC, WT, ET), got shape {tuple(regions.shape)}.")
        tc, wt, et = (regions[i] > 0.5 for i in range(3))
        if isinstance(regions, torch.Tensor):
            label = torch.zeros_like(regions[:1], dtype=torch.uint8)
        else:
            label = np.zeros((1, *regions.shape[1:]), dtype=np.uint8)
        label[0][wt] = 2
        label[0][tc] = 1
        label[0][et] = self.et_label
        return label


class RegionsToBratsLabelsd(MapTransform):
    """Dictionary version of :class:`RegionsToBratsLabels`."""

    def __init__(self, keys: KeysCollection, et_label: int = 4, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = RegionsToBratsLabels(et_label)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
