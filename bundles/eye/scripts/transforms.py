"""Fundus-specific transforms: DRIVE loading (through MONAI's PIL reader), FOV estimation, CLAHE, FOV masking.

:func:`preprocessing` is the one definition of the deterministic steps that train, validate, evaluate and inference all
use (inference without the vessel label), so they cannot drift apart; the random augmentation is listed in
``train.json``.

Channel order of the network input (fixed, recorded in metadata.json): 0 red, 1 green after CLAHE, 2 blue, each in
[0, 1] and set to 0 outside the field of view (FOV).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import LoadImage, MapTransform, Transform
from PIL import Image
from scipy import ndimage
from skimage import exposure, filters, measure

from common.errors import describe

logger = logging.getLogger(__name__)


def to_rgb(image: Image.Image) -> Image.Image:
    """PIL converter: a grayscale (or palette / RGBA) fundus image becomes RGB; grey is replicated with a warning."""
    if image.mode != "RGB":
        if image.mode in ("L", "I", "I;16", "F", "LA", "1"):
            logger.warning("grayscale fundus image %s (mode %s): replicated to 3 channels; the network was trained "
                           "on colour images, expect lower accuracy", getattr(image, "filename", ""), image.mode)
        if image.mode in ("I", "I;16", "F"):
            data = np.asarray(image, dtype=np.float64)
            image = Image.fromarray(np.round(255 * data / max(float(data.max()), 1.0)).astype(np.uint8))
        image = image.convert("RGB")
    return image


def to_gray(image: Image.Image) -> Image.Image:
    """PIL converter for masks (GIF palette or grayscale) to 8-bit grayscale."""
    return image if image.mode == "L" else image.convert("L")


_IMAGE_LOADER = LoadImage(reader=PILReader(converter=to_rgb, reverse_indexing=False), image_only=True, dtype=None)
_MASK_LOADER = LoadImage(reader=PILReader(converter=to_gray, reverse_indexing=False), image_only=True, dtype=None)


def _load(loader: LoadImage, path: str | Path, what: str) -> np.ndarray:
    try:
        return np.asarray(loader(str(path))).astype(np.uint8)
    except Exception as e:  # PIL and MONAI raise many types
        reason = describe(e, one_line=True)
        try:  # MONAI's "cannot find a suitable reader" hides PIL's reason: ask PIL, as scripts.data._read does
            with Image.open(str(path)) as image:
                image.load()
        except Exception as pil_error:  # noqa: BLE001 - any reason PIL gives is reported
            reason = describe(pil_error, one_line=True)
        raise ValueError(f"{path}: {what} is corrupt or not an image ({reason})") from e


def read_rgb(path: str | Path, what: str = "image") -> np.ndarray:
    """Read a fundus image as uint8 HxWx3 (numpy row/column order) through MONAI's PIL reader.

    Raises:
        ValueError: unreadable file; names the file and the reader's reason, in the words the dataset check uses.
    """
    return _load(_IMAGE_LOADER, path, what)


def read_mask(path: str | Path, what: str = "mask") -> np.ndarray:
    """Read a DRIVE mask (GIF/PNG) as uint8 HxW.

    Raises:
        ValueError: unreadable file (see :func:`read_rgb`).
    """
    return _load(_MASK_LOADER, path, what)


def binary_values_ok(mask: np.ndarray) -> bool:
    """True when a mask holds only {0, 255} or only {0, 1}."""
    values = set(np.unique(mask).tolist())
    return values <= {0, 255} or values <= {0, 1}


def estimate_fov(rgb: np.ndarray) -> np.ndarray:
    """Estimate the field of view of a fundus photograph (bool HxW): Otsu threshold on the smoothed red channel,
    holes filled, largest connected component kept. Used when no FOV mask is given."""
    red = ndimage.gaussian_filter(np.asarray(rgb, dtype=np.float64)[..., 0], sigma=2)
    if red.max() <= red.min():
        return np.ones(red.shape, dtype=bool)
    fov = ndimage.binary_fill_holes(red > filters.threshold_otsu(red))
    labels = measure.label(fov)
    if labels.max() > 1:
        fov = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    return fov


class LoadFundusd(MapTransform):
    """Load a DRIVE case: ``image`` (RGB, 3xHxW float in [0, 1]), ``label`` (vessels, 1xHxW in {0, 1}) and ``fov``
    (1xHxW in {0, 1}; estimated from the image when the path is empty or the key absent).

    Raises:
        ValueError: sizes that differ from the image's, or a mask that is not binary (the message names the file).
    """

    def __init__(self, image_key: str = "image", label_key: str | None = "label", fov_key: str = "fov") -> None:
        keys = [k for k in (image_key, label_key, fov_key) if k]
        super().__init__(keys, allow_missing_keys=True)
        self.image_key, self.label_key, self.fov_key = image_key, label_key, fov_key

    def _mask(self, path: str, shape: tuple[int, ...], what: str) -> torch.Tensor:
        mask = read_mask(path, what)
        if mask.shape != shape:
            raise ValueError(f"{path}: {what} size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from the image's "
                             f"{shape[1]}x{shape[0]}")
        if not binary_values_ok(mask):
            raise ValueError(f"{path}: {what} is not binary (values {np.unique(mask)[:8].tolist()}...; expected "
                             "0 and 255)")
        return torch.from_numpy((mask > 0).astype(np.float32))[None]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image_path = str(d[self.image_key])
        rgb = read_rgb(image_path)
        d[self.image_key] = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()
        if self.label_key and d.get(self.label_key):
            d[self.label_key] = self._mask(str(d[self.label_key]), rgb.shape[:2], "vessel mask")
        fov_path = d.get(self.fov_key)
        if fov_path:
            d[self.fov_key] = self._mask(str(fov_path), rgb.shape[:2], "FOV mask")
        else:
            d[self.fov_key] = torch.from_numpy(estimate_fov(rgb).astype(np.float32))[None]
        return d


class ClaheGreen(Transform):
    """Contrast-limited adaptive histogram equalisation (scikit-image) of the green channel of a 3xHxW image in
    [0, 1]; red and blue are kept. ``kernel_fraction`` sets the tile size as a fraction of the image size."""

    def __init__(self, clip_limit: float = 0.01, kernel_fraction: float = 0.125) -> None:
        if not 0.0 < float(clip_limit) <= 1.0:
            raise ValueError(f"clip_limit must lie in (0, 1], got {clip_limit}.")
        if not 0.0 < float(kernel_fraction) <= 1.0:
            raise ValueError(f"kernel_fraction must lie in (0, 1], got {kernel_fraction}.")
        self.clip_limit, self.kernel_fraction = float(clip_limit), float(kernel_fraction)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(img, dtype=torch.float32).clone()
        green = np.clip(out[1].numpy().astype(np.float64), 0.0, 1.0)
        kernel = tuple(max(4, int(round(s * self.kernel_fraction))) for s in green.shape)
        out[1] = torch.from_numpy(exposure.equalize_adapthist(green, kernel_size=kernel, clip_limit=self.clip_limit)
                                  .astype(np.float32))
        return out


class ClaheGreend(MapTransform):
    """Dict form of :class:`ClaheGreen`; afterwards the image is set to 0 outside ``fov_key``'s mask."""

    def __init__(self, keys: KeysCollection = "image", fov_key: str | None = "fov", clip_limit: float = 0.01,
                 kernel_fraction: float = 0.125) -> None:
        super().__init__(keys)
        self.fov_key = fov_key
        self.clahe = ClaheGreen(clip_limit, kernel_fraction)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.clahe(d[key])
            if self.fov_key and self.fov_key in d:
                d[key] = d[key] * torch.as_tensor(d[self.fov_key], dtype=torch.float32)
        return d


class MaskOutsideFOVd(MapTransform):
    """Set the given keys (predictions, probabilities, labels) to 0 outside the FOV mask in ``fov_key``."""

    def __init__(self, keys: KeysCollection, fov_key: str = "fov", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fov_key = fov_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        fov = torch.as_tensor(d[self.fov_key])
        for key in self.key_iterator(d):
            value = torch.as_tensor(d[key])
            d[key] = value * (fov.to(value.device) > 0).to(value.dtype)
        return d



def preprocessing(clahe_clip: float, with_label: bool = True) -> list[Transform]:
    """The deterministic preprocessing: load image, vessel label and FOV (:class:`LoadFundusd`), CLAHE on the green
    channel and zero outside the FOV (:class:`ClaheGreend`).

    Args:
        clahe_clip: CLAHE clip limit in (0, 1] (scikit-image's ``clip_limit``; recorded in ``model.json``).
        with_label: also load ``label`` (the vessel mask); inference has none.

    Returns:
        the transforms, for a ``Compose``: ``image`` becomes 3xHxW float in [0, 1] (0 outside the FOV), ``fov`` and
        ``label`` 1xHxW in {0, 1}, at the input's size.

    Raises:
        ValueError: a ``clahe_clip`` outside (0, 1].
    """
    return [
        LoadFundusd(image_key="image", label_key="label" if with_label else None, fov_key="fov"),
        ClaheGreend(keys="image", fov_key="fov", clip_limit=clahe_clip),
    ]
