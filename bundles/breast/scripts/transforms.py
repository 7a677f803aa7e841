"""Mammography transforms: DICOM loading with ROI cropping, and the case study's Gaussian/median/bilateral denoising.

Intensity windowing and resizing are MONAI's own transforms. :func:`preprocessing` is the one definition of the
deterministic steps of classification's train, validate, evaluate and inference, so they cannot drift apart; the
random augmentation is listed in ``train.json``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    EnsureTyped,
    MapTransform,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityRangePercentilesd,
    Transform,
)
from scipy import ndimage
from skimage.restoration import denoise_bilateral

from scripts.dicom import read_dicom


def crop_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """Square box around the nonzero pixels of ``mask``, enlarged by ``margin`` x its side on each side.

    Returns ``(y0, y1, x0, x1)`` clipped to the image. Raises ValueError on an empty mask.
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("ROI mask is empty: no pixel above zero.")
    cy, cx = (ys.min() + ys.max() + 1) / 2.0, (xs.min() + xs.max() + 1) / 2.0
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) * (1.0 + 2.0 * margin)
    y0, x0 = int(round(cy - side / 2)), int(round(cx - side / 2))
    y1, x1 = y0 + int(round(side)), x0 + int(round(side))
    return max(y0, 0), min(y1, mask.shape[0]), max(x0, 0), min(x1, mask.shape[1])


class LoadMass(Transform):
    """Read a mass ROI as a (1, H, W) float32 array, larger = denser.

    Called with a cropped-image path, it reads that DICOM; called with ``(full_image_path, roi_mask_path)``, it crops
    the full image to the ROI mask's bounding box enlarged by ``margin`` (the same square box the synthetic cropped
    images use).
    """

    def __init__(self, margin: float = 0.25) -> None:
        if not 0.0 <= margin <= 2.0:
            raise ValueError(f"margin must be in [0, 2] (fraction of the ROI box side), got {margin}.")
        self.margin = float(margin)

    def __call__(self, source: str | Sequence[str]) -> np.ndarray:
        if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
            return read_dicom(source)[None]
        full_path, roi_path = source
        full, roi = read_dicom(full_path), read_dicom(roi_path)
        if full.shape != roi.shape:
            raise ValueError(f"{roi_path}: ROI mask shape {roi.shape} differs from the full image {full.shape} "
                             f"({full_path}).")
        try:
            y0, y1, x0, x1 = crop_box(roi > roi.min(), self.margin)
        except ValueError as e:
            raise ValueError(f"{roi_path}: {e}") from e
        return np.ascontiguousarray(full[y0:y1, x0:x1])[None]


class LoadMassd(MapTransform):
    """Dictionary form of :class:`LoadMass`: fills ``image`` from ``image`` (a crop path) or ``full`` + ``roi``."""

    def __init__(self, keys: KeysCollection = "image", margin: float = 0.25) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.loader = LoadMass(margin)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        if "image" in self.keys and "image" not in d:
            if "full" not in d or "roi" not in d:
                raise KeyError(f"case {d.get('case', '?')}: needs 'image' (cropped image) or 'full' and 'roi' paths.")
            d["image"] = self.loader((d["full"], d["roi"]))
        return d


class Denoise(Transform):
    """Gaussian, then median, then bilateral filtering of a (C, H, W) image in [0, 1] (Hadush et al. 2020).

    Gaussian and median filters are scipy's (``ndimage.gaussian_filter``, ``ndimage.median_filter``), the bilateral
    filter scikit-image's ``restoration.denoise_bilateral``. A step is skipped when its size is 0.
    """

    def __init__(self, gaussian_sigma: float = 0.5, median_size: int = 3, bilateral_sigma_color: float = 0.05,
                 bilateral_sigma_spatial: float = 1.0) -> None:
        if gaussian_sigma < 0 or median_size < 0 or bilateral_sigma_color < 0 or bilateral_sigma_spatial < 0:
            raise ValueError("denoising sizes must be >= 0, got gaussian_sigma="
                             f"{gaussian_sigma}, median_size={median_size}, bilateral_sigma_color="
                             f"{bilateral_sigma_color}, bilateral_sigma_spatial={bilateral_sigma_spatial}.")
        self.gaussian_sigma, self.median_size = float(gaussian_sigma), int(median_size)
        self.sigma_color, self.sigma_spatial = float(bilateral_sigma_color), float(bilateral_sigma_spatial)

    def __call__(self, img: Any) -> Any:
        is_tensor = hasattr(img, "detach")
        out = np.asarray(img.detach().cpu().numpy() if is_tensor else img, dtype=np.float32).copy()
        for c in range(out.shape[0]):
            channel = out[c]
            if self.gaussian_sigma > 0:
                channel = ndimage.gaussian_filter(channel, self.gaussian_sigma)
            if self.median_size > 1:
                channel = ndimage.median_filter(channel, size=self.median_size)
            if self.sigma_color > 0 and self.sigma_spatial > 0:
                channel = denoise_bilateral(np.clip(channel, 0.0, 1.0).astype(np.float64),
                                            sigma_color=self.sigma_color, sigma_spatial=self.sigma_spatial,
                                            channel_axis=None).astype(np.float32)
            out[c] = channel
        if is_tensor:
            import torch

            result = torch.as_tensor(out)
            return img.new_tensor(result) if not hasattr(img, "meta") else type(img)(result, meta=img.meta)
        return out


class Denoised(MapTransform):
    """Dictionary form of :class:`Denoise`."""

    def __init__(self, keys: KeysCollection = "image", gaussian_sigma: float = 0.5, median_size: int = 3,
                 bilateral_sigma_color: float = 0.05, bilateral_sigma_spatial: float = 1.0) -> None:
        super().__init__(keys)
        self.denoise = Denoise(gaussian_sigma, median_size, bilateral_sigma_color, bilateral_sigma_spatial)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.denoise(d[key])
        return d


def preprocessing(roi_size: int, crop_margin: float, window_lower: float, window_upper: float, gaussian_sigma: float,
                  median_size: int, bilateral_sigma_color: float, bilateral_sigma_spatial: float) -> list[Transform]:
    """The deterministic preprocessing of the mass classifier: load the ROI crop (:class:`LoadMassd`), window the
    intensity between two percentiles to [0, 1], resize the longest side to ``roi_size`` (area interpolation), pad the
    other with edge values to a square, denoise (:class:`Denoised`), float32 without metadata.

    Every argument is a ``train.json`` id recorded in ``model.json`` beside the checkpoint, so evaluation and
    inference rebuild what training used.

    Args:
        roi_size: side of the square network input, pixels.
        crop_margin: margin around the ROI mask's bounding box, as a fraction of its size (cases given as full image
            plus ROI mask).
        window_lower, window_upper: intensity percentiles (0-100) mapped to 0 and 1 (clipped).
        gaussian_sigma, median_size, bilateral_sigma_color, bilateral_sigma_spatial: the denoising steps
            (:class:`Denoise`; pixels, and [0, 1] intensity for the bilateral colour sigma).

    Returns:
        the transforms, for a ``Compose``: ``image`` (a DICOM path, or ``full`` + ``roi`` paths) becomes a
        1 x ``roi_size`` x ``roi_size`` float32 tensor in [0, 1].
    """
    return [
        LoadMassd(keys="image", margin=crop_margin),
        ScaleIntensityRangePercentilesd(keys="image", lower=window_lower, upper=window_upper, b_min=0.0, b_max=1.0,
                                        clip=True),
        Resized(keys="image", spatial_size=roi_size, size_mode="longest", mode="area"),
        ResizeWithPadOrCropd(keys="image", spatial_size=[roi_size, roi_size], mode="edge"),
        Denoised(keys="image", gaussian_sigma=gaussian_sigma, median_size=median_size,
                 bilateral_sigma_color=bilateral_sigma_color, bilateral_sigma_spatial=bilateral_sigma_spatial),
        EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
    ]
