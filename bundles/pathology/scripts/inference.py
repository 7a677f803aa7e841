"""Inference: tumour probability for PCam patch files and tumour heat-maps for pyramidal TIFF slides.

Slides are read through MONAI's ``WSIReader(backend="tifffile")`` (no GPU library needed). Tissue is found with
MONAI's ``ForegroundMask`` on the HSV saturation (Otsu, floored so that glass stays background); the slide level is
cut into a grid of ``stride`` x ``stride`` cells and every tissue cell is classified from the ``roi_size`` x
``roi_size`` patch (96 as in PCam) centred on it (as PCam labels the centre of a patch). Heat-map pixel ``(i, j)``
covers level pixels ``[i*stride, (i+1)*stride) x [j*stride, (j+1)*stride)``; its size is
``ceil(H / stride) x ceil(W / stride)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tifffile
import torch
from monai.data import WSIReader
from monai.transforms import ForegroundMask

from common.checkpoint import load_network_weights, unwrap
from common.explain import GradCam, enabled
from common.explain import overlay as explain_overlay
from common.inputs import list_input_folder
from common.io import atomic_path, save_png, write_csv
from common.validation import run_each
from scripts.data import PATCH
from scripts.transforms import tissue_saturation_threshold

logger = logging.getLogger(__name__)

COLUMNS = ["case", "kind", "prob_tumour", "label", "tumour_area_fraction", "tissue_cells", "heatmap_level",
           "heatmap_cell_px"]


SLIDE_SUFFIXES = (".tif", ".tiff")


def classify_input(entry: Path) -> tuple[str, str]:
    """Whether an entry of the pathology input folder is predicted (slides ``*.tif``/``*.tiff`` and PCam patch
    files ``*_x.h5``, any case), ignored as documented (PCam label files ``*_y.h5``, ``*_meta.csv``) or not
    predicted (anything else, with the reason), for :func:`common.inputs.list_input_folder`."""
    name = entry.name.lower()
    if entry.is_dir():
        return "skip", "a folder: pathology inference reads slides and patch files directly in --input_dir"
    if entry.suffix.lower() in SLIDE_SUFFIXES or name.endswith("_x.h5"):
        return "predict", ""
    if name.endswith("_y.h5") or name.endswith("_meta.csv"):
        return "used", "PCam labels/metadata: ignored by inference (evaluate reads them)"
    if entry.suffix.lower() in (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".bif", ".czi", ".isyntax"):
        return "skip", (f"a vendor slide format ({entry.suffix}) this bundle does not read: convert it to a tiled "
                        "pyramidal TIFF (e.g. `vips tiffsave in out.tif --tile --pyramid --compression jpeg`)")
    if name.endswith((".h5", ".hdf5")):
        return "skip", "an HDF5 file that is not a PCam patch file (*_x.h5 with dataset 'x')"
    return "skip", f"'{entry.suffix or '(no suffix)'}' is neither a slide (*.tif, *.tiff) nor a patch file (*_x.h5)"


def list_inputs(input_dir: str | Path) -> list[Path]:
    """Slides ``*.tif``/``*.tiff`` and patch files ``*_x.h5`` directly under ``input_dir`` (any case); every other
    entry is named in a warning with the reason (:func:`common.inputs.list_input_folder`).

    Raises:
        common.validation.DatasetError: the folder does not exist or holds nothing to predict.
    """
    return list_input_folder(input_dir, classify_input, "slides (*.tif) or PCam patch files (*_x.h5)").predict


class Predictor:
    """Batched calibrated tumour probabilities of ``H x W x 3`` uint8 patches: preprocessing, network, logit divided
    by ``temperature`` (fitted on the validation split at training, ``model.json``), sigmoid.

    Raises:
        ValueError: ``temperature`` is not positive.
    """

    def __init__(self, network: torch.nn.Module, preprocessing: Callable, inferer: Callable,
                 postprocessing: Callable, device: torch.device, batch_size: int = 64,
                 temperature: float = 1.0) -> None:
        self.network, self.preprocessing, self.inferer = network.eval(), preprocessing, inferer
        self.postprocessing, self.device, self.batch_size = postprocessing, device, max(int(batch_size), 1)
        self.temperature = float(temperature)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature} (model.json or --temperature)")

    def tensor(self, patches: np.ndarray) -> torch.Tensor:
        """The preprocessed ``[B, 3, H, W]`` batch on the device."""
        return torch.stack([torch.as_tensor(self.preprocessing(p)) for p in patches]).to(self.device)

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        probs = []
        for start in range(0, len(patches), self.batch_size):
            chunk = patches[start:start + self.batch_size]
            with torch.no_grad():
                out = self.postprocessing(self.inferer(self.tensor(chunk), self.network) / self.temperature)
            probs.append(torch.as_tensor(out).detach().cpu().float().reshape(-1).numpy())
        return np.concatenate(probs) if probs else np.zeros(0, np.float32)


def read_slide(path: Path, level: int) -> np.ndarray:
    """Level ``level`` of a tiled pyramidal TIFF as ``H x W x 3`` uint8, through MONAI's tifffile WSI reader."""
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.pages or not tif.pages[0].is_tiled:
                raise ValueError(f"{path} is not a tiled (pyramidal) TIFF; convert it, e.g. with "
                                 f"tifffile.imwrite(..., tile=(256, 256)) per level")
    except tifffile.TiffFileError as e:
        raise ValueError(f"{path} is not a readable TIFF ({e})") from e
    reader = WSIReader(backend="tifffile", level=level)
    wsi = reader.read(str(path))
    try:
        levels = reader.get_level_count(wsi)
        if not 0 <= level < levels:
            raise ValueError(f"{path} has {levels} level(s); heatmap_level={level} does not exist")
        try:
            image, _ = reader.get_data(wsi, level=level)
        except (ValueError, ImportError) as e:
            if "imagecodecs" not in str(e):
                raise
            compression = getattr(wsi.pages[level].compression, "name", wsi.pages[level].compression)
            raise ValueError(f"{path}: tiles are {compression}-compressed and decoding them needs the 'imagecodecs' "
                             f"package (pip install -r requirements.txt): {e}") from e
    finally:
        wsi.close()
    image = np.moveaxis(np.asarray(image), 0, -1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{path} level {level} is not RGB (shape {image.shape})")
    return image.astype(np.uint8, copy=False)


def tissue_cells(image: np.ndarray, stride: int, min_fraction: float = 0.25, subsample: int = 4) -> np.ndarray:
    """Boolean ``ceil(H/stride) x ceil(W/stride)`` grid: cells whose tissue fraction (MONAI ``ForegroundMask`` on a
    ``subsample``-times subsampled image) is at least ``min_fraction``."""
    small = image[::subsample, ::subsample]
    mask = np.asarray(ForegroundMask(threshold=None, hsv_threshold={"S": tissue_saturation_threshold})(
        np.moveaxis(small, -1, 0)))[0].astype(np.float32)
    grid_h, grid_w = -(-image.shape[0] // stride), -(-image.shape[1] // stride)
    cell = max(stride // subsample, 1)
    padded = np.zeros((grid_h * cell, grid_w * cell), np.float32)
    padded[: mask.shape[0], : mask.shape[1]] = mask[: grid_h * cell, : grid_w * cell]
    return padded.reshape(grid_h, cell, grid_w, cell).mean(axis=(1, 3)) >= min_fraction


def slide_heatmap(image: np.ndarray, predictor: Predictor, stride: int, min_tissue: float = 0.25,
                  roi_size: int = PATCH) -> tuple[np.ndarray, np.ndarray]:
    """Tumour probability per grid cell (0 on background) and the tissue-cell mask; each cell is classified from the
    ``roi_size`` x ``roi_size`` patch centred on it (the network input of training, ``model.json``)."""
    tissue = tissue_cells(image, stride, min_tissue)
    margin = roi_size
    padded = np.pad(image, ((margin, margin + stride), (margin, margin + stride), (0, 0)), constant_values=255)
    heat = np.zeros(tissue.shape, np.float32)
    cells = np.argwhere(tissue)
    offset = margin + stride // 2 - roi_size // 2
    for start in range(0, len(cells), 256):
        chunk = cells[start:start + 256]
        patches = np.stack([padded[i * stride + offset:i * stride + offset + roi_size,
                                   j * stride + offset:j * stride + offset + roi_size] for i, j in chunk])
        heat[chunk[:, 0], chunk[:, 1]] = predictor(patches)
    return heat, tissue


def overlay(image: np.ndarray, heat: np.ndarray, stride: int) -> np.ndarray:
    """RGB thumbnail at heat-map resolution (cell means) with tumour probability blended in red."""
    grid_h, grid_w = heat.shape
    padded = np.full((grid_h * stride, grid_w * stride, 3), 255, np.float32)
    padded[: image.shape[0], : image.shape[1]] = image
    thumb = padded.reshape(grid_h, stride, grid_w, stride, 3).mean(axis=(1, 3))
    alpha = 0.7 * heat[..., None]
    return np.clip(thumb * (1 - alpha) + np.array([255.0, 0.0, 0.0]) * alpha, 0, 255).astype(np.uint8)


def predict_slide(path: Path, out_dir: Path, predictor: Predictor, level: int, stride: int,
                  threshold: float = 0.5, roi_size: int = PATCH) -> dict[str, Any]:
    """Write ``<stem>_prob.tif`` (float32 heat-map) and ``<stem>_heatmap.png`` (overlay); return the slide's row."""
    image = read_slide(path, level)
    heat, tissue = slide_heatmap(image, predictor, stride, roi_size=roi_size)
    if not tissue.any():
        logger.warning("%s: no tissue found, writing an empty heat-map", path)
    with atomic_path(out_dir / f"{path.stem}_prob.tif") as tmp:
        tifffile.imwrite(tmp, heat, photometric="minisblack", metadata={"level": level, "cell_px": stride})
    save_png(overlay(image, heat, stride), out_dir / f"{path.stem}_heatmap.png")
    n_tissue = int(tissue.sum())
    max_prob = float(heat.max()) if n_tissue else 0.0
    return {"case": path.stem, "kind": "slide", "prob_tumour": max_prob, "label": int(max_prob >= threshold),
            "tumour_area_fraction": float((heat[tissue] >= threshold).mean()) if n_tissue else 0.0,
            "tissue_cells": n_tissue, "heatmap_level": level, "heatmap_cell_px": stride}


def predict_patches(path: Path, predictor: Predictor, threshold: float = 0.5, cam: GradCam | None = None,
                    out_dir: Path | None = None, roi_size: int = PATCH) -> list[dict[str, Any]]:
    """Rows for every patch of a PCam ``*_x.h5`` file (dataset ``x``: N x roi_size x roi_size x 3 uint8, 96 in PCam);
    with ``cam``, also
    ``<out_dir>/<case>_gradcam.png`` per patch (the patch, 4x, with the Grad-CAM of the tumour logit over it)."""
    try:
        with h5py.File(path, "r") as f:
            if "x" not in f:
                raise ValueError(f"{path} has no dataset 'x' (found {sorted(f.keys())})")
            data = f["x"]
            if data.ndim != 4 or tuple(data.shape[1:]) != (roi_size, roi_size, 3) or data.dtype != np.uint8:
                raise ValueError(f"{path}: dataset 'x' is {data.shape} {data.dtype}, expected N x {roi_size} x "
                                 f"{roi_size} x 3 uint8 (the network input of training, roi_size)")
            probs = np.concatenate([predictor(np.asarray(data[s:s + 1024])) for s in range(0, data.shape[0], 1024)]
                                   ) if data.shape[0] else np.zeros(0)
            stem = path.name[: -len(".h5")]
            for s in range(0, data.shape[0] if cam is not None else 0, predictor.batch_size):
                chunk = np.asarray(data[s:s + predictor.batch_size])
                for i, (patch, heat) in enumerate(zip(chunk, cam(predictor.tensor(chunk)))):
                    save_png(explain_overlay(patch / 255.0, heat), out_dir / f"{stem}_{s + i:06d}_gradcam.png")
    except OSError as e:
        raise ValueError(f"{path} is not a readable HDF5 file ({e})") from e
    return [{"case": f"{stem}_{i:06d}", "kind": "patch", "prob_tumour": float(p), "label": int(p >= threshold)}
            for i, p in enumerate(probs)]


def predict(input_dir: str, output_dir: str, network: torch.nn.Module, ckpt_path: str, preprocessing: Callable,
            inferer: Callable, postprocessing: Callable, device: torch.device, batch_size: int = 64,
            heatmap_level: int = 0, heatmap_stride: int = 96, temperature: float = 1.0, threshold: float = 0.5,
            explain: bool | str = False, explain_layer: str = "features.7.2", roi_size: int = PATCH
            ) -> list[dict[str, Any]]:
    """Predict every slide and patch file in ``input_dir``; write heat-maps under ``<output_dir>/predictions/`` and
    ``<output_dir>/predictions.csv``. Bad inputs are reported together at the end (non-zero exit), after the good
    ones were written. Probabilities are calibrated by ``temperature`` and labels are ``p >= threshold`` (both
    recorded in ``model.json`` at training); with ``explain``, every patch of a patch file also gets a Grad-CAM
    overlay ``<case>_gradcam.png`` (slides: none, their heat-map is the explanation)."""
    inputs = list_inputs(input_dir)
    load_network_weights(network, ckpt_path)
    predictor = Predictor(network.to(device), preprocessing, inferer, postprocessing, device, batch_size, temperature)
    # the eager network (inside a common.backends wrapper): Grad-CAM needs its layers and gradients
    cam = GradCam(unwrap(network), explain_layer, class_idx=0) if enabled(explain) else None
    threshold = float(threshold)
    out = Path(str(output_dir))
    rows: list[dict[str, Any]] = []

    def one(path: Path) -> None:
        if path.name.lower().endswith("_x.h5"):
            rows.extend(predict_patches(path, predictor, threshold, cam, out / "predictions", int(roi_size)))
        else:
            rows.append(predict_slide(path, out / "predictions", predictor, int(heatmap_level), int(heatmap_stride),
                                      threshold, int(roi_size)))

    try:
        run_each(inputs, one, name_of=str, what="pathology inference")
    finally:
        if rows:
            write_csv(out / "predictions.csv", rows, fieldnames=COLUMNS)
    return rows
