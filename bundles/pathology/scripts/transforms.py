"""Pathology transforms: PCam patch loading, Macenko stain normalisation (MONAI's), HED colour jitter, tissue mask.

Stain normalisation is MONAI's ``monai.apps.pathology.transforms.NormalizeHEStains`` (Macenko et al., ISBI 2009)
with one correction: MONAI 1.6's ``ExtractHEStains`` orders the two extracted stain vectors by their red/blue
optical-density ratio and puts the *lower* ratio first (MONAI PR #8551), which is eosin for the usual H&E vectors
(Ruifrok's haematoxylin OD vector (0.65, 0.70, 0.29) has R/B 2.2, eosin (0.07, 0.99, 0.11) 0.64, and MONAI's own
reference ``target_he`` has the higher ratio in its haematoxylin column). Unfixed, every normalised patch gets nuclei
painted in the eosin colour. :class:`OrderedExtractHEStains` puts the higher-ratio vector first, so the output
matches MONAI's documented contract (first column haematoxylin) whichever order MONAI returns.

:func:`preprocessing` is the one definition of the patch preprocessing that train, validate, evaluate and inference
all use (inference with its own patch reader and without the label), so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from monai.apps.pathology.transforms import ExtractHEStains, NormalizeHEStains
from monai.config import KeysCollection
from monai.transforms import EnsureTyped, MapTransform, Randomizable, ScaleIntensityRanged, Transform, Transposed
from skimage.color import hed2rgb, rgb2hed
from skimage.filters import threshold_otsu


class OrderedExtractHEStains(ExtractHEStains):
    """MONAI's Macenko stain extraction, returning ``[3, 2]`` with haematoxylin (higher OD red/blue ratio) first."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        he = super().__call__(image)
        eps = np.finfo(np.float32).eps
        if he[0, 0] / (he[2, 0] + eps) < he[0, 1] / (he[2, 1] + eps):
            he = np.ascontiguousarray(he[:, ::-1])
        return he


class MacenkoNormalize(Transform):
    """Macenko stain normalisation of an ``H x W x 3`` uint8 RGB image to MONAI's reference H&E stain.

    A patch with too little stained tissue to estimate two stain vectors (glass, pale background: MONAI raises
    "All pixels of the input image are below the absorbance threshold") is returned unchanged, as are patches
    whose estimate is degenerate (non-finite).

    Args:
        enabled: when False the transform is the identity (the ablation without stain normalisation).
        tli, alpha, beta: MONAI's ``NormalizeHEStains`` parameters (transmitted light, percentile, OD threshold).
    """

    def __init__(self, enabled: bool = True, tli: float = 240, alpha: float = 1, beta: float = 0.15) -> None:
        self.enabled = bool(enabled)
        self.normalizer = NormalizeHEStains(tli=tli, alpha=alpha, beta=beta)
        self.normalizer.stain_extractor = OrderedExtractHEStains(tli=tli, alpha=alpha, beta=beta)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"MacenkoNormalize expects an H x W x 3 uint8 image, got {image.shape} {image.dtype}.")
        if not self.enabled:
            return image
        try:
            with np.errstate(all="ignore"):
                out = self.normalizer(image)
        except (ValueError, np.linalg.LinAlgError):
            return image
        return out


class MacenkoNormalized(MapTransform):
    """Dictionary version of :class:`MacenkoNormalize`."""

    def __init__(self, keys: KeysCollection, enabled: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalize = MacenkoNormalize(enabled=enabled)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalize(d[key])
        return d


class RandHEDJitter(Randomizable, Transform):
    """Stain colour augmentation in HED space (Tellez et al., "Whole-slide mitosis detection in H&E breast
    histology using PHH3 as a reference to train distilled stain-invariant convolutional networks", IEEE TMI 2018):
    each stain channel ``s`` of ``skimage.color.rgb2hed`` becomes ``s * a + b`` with ``a ~ U(1 - sigma, 1 + sigma)``
    and ``b ~ U(-sigma, sigma) * 0.05``. Input and output: ``H x W x 3`` uint8 RGB.
    """

    def __init__(self, prob: float = 0.5, sigma: float = 0.05) -> None:
        if not 0.0 <= prob <= 1.0 or not 0.0 <= sigma < 1.0:
            raise ValueError(f"RandHEDJitter needs prob in [0, 1] and sigma in [0, 1), got {prob}, {sigma}.")
        self.prob, self.sigma = prob, sigma
        self._do, self._scale, self._shift = False, np.ones(3), np.zeros(3)

    def randomize(self, data: Any = None) -> None:
        self._do = self.R.random() < self.prob
        self._scale = self.R.uniform(1 - self.sigma, 1 + self.sigma, 3)
        self._shift = self.R.uniform(-self.sigma, self.sigma, 3) * 0.05

    def __call__(self, image: np.ndarray, randomize: bool = True) -> np.ndarray:
        if randomize:
            self.randomize()
        if not self._do:
            return image
        hed = rgb2hed(np.asarray(image)) * self._scale + self._shift
        return np.clip(np.rint(hed2rgb(hed) * 255), 0, 255).astype(np.uint8)


class RandHEDJitterd(Randomizable, MapTransform):
    """Dictionary version of :class:`RandHEDJitter` (one draw shared by all keys)."""

    def __init__(self, keys: KeysCollection, prob: float = 0.5, sigma: float = 0.05,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.jitter = RandHEDJitter(prob=prob, sigma=sigma)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandHEDJitterd:
        super().set_random_state(seed, state)
        self.jitter.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.jitter.randomize()
        for key in self.key_iterator(d):
            d[key] = self.jitter(d[key], randomize=False)
        return d


class LoadPCamPatchd(MapTransform):
    """Read patch ``d["index"]`` of the PCam ``x`` dataset in file ``d[key]`` (``H x W x 3`` uint8).

    Files are opened lazily, once per process (h5py handles are not shared with forked data-loader workers).
    """

    def __init__(self, keys: KeysCollection = "image", index_key: str = "index") -> None:
        super().__init__(keys)
        self.index_key = index_key
        self._files: dict[str, h5py.File] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def _dataset(self, path: str) -> h5py.Dataset:
        if path not in self._files:
            self._files[path] = h5py.File(path, "r")
        return self._files[path]["x"]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = np.asarray(self._dataset(str(Path(str(d[key]))))[int(d[self.index_key])], dtype=np.uint8)
        return d


def preprocessing(stain_normalisation: bool, with_label: bool = True, loader: Transform | None = None,
                  stain_augmentation: Transform | None = None) -> list[Transform]:
    """The patch preprocessing: read, Macenko stain normalisation, HWC -> CHW, [0, 255] -> [0, 1], float32 tensors.

    Args:
        stain_normalisation: Macenko normalisation on (False: the ablation without it; recorded in ``model.json``).
        with_label: also turn ``label`` (0/1) into a float32 tensor; inference has none.
        loader: the dict transform that puts the ``H x W x 3`` uint8 patch into ``image``; ``None`` reads PCam's
            ``x`` dataset (:class:`LoadPCamPatchd`); inference passes ``scripts.inference.LoadInputPatchd`` (PCam
            files and slides).
        stain_augmentation: a transform of the uint8 ``H x W x 3`` patch run after the stain normalisation and before
            the conversion (training's :class:`RandHEDJitterd`); ``None`` for validation, evaluation and inference.

    Returns:
        the transforms, for a ``Compose``: ``image`` becomes a 3 x H x W float32 tensor in [0, 1] (no metadata),
        ``label`` a float32 tensor.
    """
    keys = ["image", "label"] if with_label else ["image"]
    return [
        loader if loader is not None else LoadPCamPatchd(keys="image"),
        MacenkoNormalized(keys="image", enabled=stain_normalisation),
        *([stain_augmentation] if stain_augmentation is not None else []),
        Transposed(keys="image", indices=[2, 0, 1]),
        ScaleIntensityRanged(keys="image", a_min=0, a_max=255, b_min=0.0, b_max=1.0),
        EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False),
    ]


def tissue_saturation_threshold(saturation: np.ndarray, minimum: float = 0.07) -> float:
    """Threshold for MONAI's ``ForegroundMask(hsv_threshold={"S": ...})``: Otsu on the saturation, but never below
    ``minimum``, so that an all-glass slide (unimodal, low saturation) gives an empty tissue mask."""
    saturation = np.asarray(saturation, dtype=np.float64)
    if saturation.size == 0 or np.ptp(saturation) < 1e-6:
        return float(max(minimum, saturation.max(initial=0.0)))
    return float(max(threshold_otsu(saturation), minimum))
