"""Inference: tumour probability for PCam patch files and tumour heat-maps for pyramidal TIFF slides.

Slides are read through MONAI's ``WSIReader(backend="tifffile")`` (no GPU library needed). Tissue is found with
MONAI's ``ForegroundMask`` on the HSV saturation (Otsu, floored so that glass stays background); the slide level is
cut into a grid of ``stride`` x ``stride`` cells and every tissue cell is classified from the ``roi_size`` x
``roi_size`` patch (96 as in PCam) centred on it (as PCam labels the centre of a patch). Heat-map pixel ``(i, j)``
covers level pixels ``[i*stride, (i+1)*stride) x [j*stride, (j+1)*stride)``; its size is
``ceil(H / stride) x ceil(W / stride)``.

``inference.json`` runs MONAI's evaluator (:mod:`common.inference`) over PATCHES, never a whole file as one item:
:func:`case_items` checks each input up front and lists its patches (the patches of a PCam file, or the tissue cells
of a slide), :class:`LoadInputPatchd` reads each one lazily (by index from the HDF5 file, or cut from the slide level
held by :class:`SlideLevels`, one level in memory at a time), the dataloader batches them (``batch_size``), and the
``CaseWriter`` collects the per-patch results (:func:`write_patch`, with the Grad-CAM overlays) and writes each
file's outputs when its last patch is done (:func:`finish_input`), then ``predictions.csv`` once
(:func:`write_predictions`). One bad file is reported by name and the others are still predicted; the run then ends
with an error naming it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tifffile
import torch
from monai.data import WSIReader
from monai.transforms import ForegroundMask

from common.explain import GradCam
from common.explain import overlay as explain_overlay
from common.inference import output_path
from common.inputs import list_input_folder
from common.io import atomic_path, save_png, write_csv
from scripts.data import PATCH
from scripts.transforms import LoadPCamPatchd, tissue_saturation_threshold

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


def centred_patch(image: np.ndarray, row: int, col: int, stride: int, roi_size: int = PATCH) -> np.ndarray:
    """The ``roi_size`` x ``roi_size`` x 3 uint8 patch of ``image`` (``H x W x 3``) centred on grid cell
    ``(row, col)``, i.e. on pixel ``(row * stride + stride // 2, col * stride + stride // 2)`` (its top-left corner
    ``roi_size // 2`` up and left of that); pixels beyond the image are white (255, glass)."""
    top, left = row * stride + stride // 2 - roi_size // 2, col * stride + stride // 2 - roi_size // 2
    patch = np.full((roi_size, roi_size, image.shape[-1]), 255, np.uint8)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + roi_size, image.shape[0]), min(left + roi_size, image.shape[1])
    if y1 > y0 and x1 > x0:
        patch[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
    return patch


def overlay(image: np.ndarray, heat: np.ndarray, stride: int) -> np.ndarray:
    """RGB thumbnail at heat-map resolution (cell means) with tumour probability blended in red."""
    grid_h, grid_w = heat.shape
    padded = np.full((grid_h * stride, grid_w * stride, 3), 255, np.float32)
    padded[: image.shape[0], : image.shape[1]] = image
    thumb = padded.reshape(grid_h, stride, grid_w, stride, 3).mean(axis=(1, 3))
    alpha = 0.7 * heat[..., None]
    return np.clip(thumb * (1 - alpha) + np.array([255.0, 0.0, 0.0]) * alpha, 0, 255).astype(np.uint8)


class SlideLevels:
    """The heat-map level of the slide being predicted, read once (:func:`read_slide`) and kept until another slide
    is asked for: one level in memory at a time, shared by :func:`case_items` (tissue grid), :class:`LoadInputPatchd`
    (the patches) and :func:`finish_input` (the overlay) of one ``inference.json``."""

    def __init__(self, level: int = 0) -> None:
        self.level = int(level)
        self._path: str | None = None
        self._image: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_path": None, "_image": None}

    def __call__(self, path: str | Path) -> np.ndarray:
        """Level ``level`` of ``path`` as ``H x W x 3`` uint8 (ValueError naming the file, see :func:`read_slide`)."""
        if self._path != str(path):
            self._path, self._image = None, None  # the previous level is released before the next one is read
            self._image, self._path = read_slide(Path(str(path)), self.level), str(path)
        return self._image


#: keys of every item (patch-file and slide items alike, so that one batch may hold both)
ITEM_KEYS = ("file", "kind", "case", "index", "row", "col", "grid_h", "grid_w", "tissue")


def _patch_count(path: Path, roi_size: int) -> int:
    """Number of patches in a PCam ``*_x.h5`` file, after checking its dataset ``x`` (ValueError naming the file)."""
    try:
        with h5py.File(path, "r") as f:
            if "x" not in f:
                raise ValueError(f"{path} has no dataset 'x' (found {sorted(f.keys())})")
            data = f["x"]
            if data.ndim != 4 or tuple(data.shape[1:]) != (roi_size, roi_size, 3) or data.dtype != np.uint8:
                raise ValueError(f"{path}: dataset 'x' is {data.shape} {data.dtype}, expected N x {roi_size} x "
                                 f"{roi_size} x 3 uint8 (the network input of training, roi_size)")
            return int(data.shape[0])
    except OSError as e:
        raise ValueError(f"{path} is not a readable HDF5 file ({e})") from e


def case_items(path: str | Path, slides: SlideLevels, stride: int = 96, roi_size: int = PATCH,
               min_tissue: float = 0.25) -> list[dict[str, Any]]:
    """The items (patches, read later by :class:`LoadInputPatchd`) of one input, checked up front:

    - a PCam ``*_x.h5`` file (dataset ``x``: N x roi_size x roi_size x 3 uint8, 96 in PCam): one item per patch
      (``index``; case ``<stem>_<index:06d>``); none for an empty file;
    - a slide: its level ``slides.level`` is read (:func:`read_slide`), cut into a grid of ``stride`` x ``stride``
      cells, and every tissue cell (:func:`tissue_cells`) is one item (``row``, ``col``), classified from the
      ``roi_size`` patch centred on it; a slide without tissue is one item with ``tissue`` 0 (its prediction is not
      used) so that its empty heat-map and row are written.

    Raises:
        ValueError: naming the file: not a readable HDF5 file or TIFF, wrong dataset, missing level, not RGB.
    """
    path, roi_size, stride = Path(str(path)), int(roi_size), int(stride)
    item = dict.fromkeys(ITEM_KEYS, 0) | {"file": str(path)}
    if path.name.lower().endswith("_x.h5"):
        stem = path.name[: -len(".h5")]
        return [{**item, "kind": "patch", "case": f"{stem}_{i:06d}", "index": i, "tissue": 1}
                for i in range(_patch_count(path, roi_size))]
    tissue = tissue_cells(slides(path), stride, min_tissue)
    item.update(kind="slide", case=path.stem, grid_h=tissue.shape[0], grid_w=tissue.shape[1])
    if not tissue.any():
        logger.warning("%s: no tissue found, writing an empty heat-map", path)
        return [{**item, "tissue": 0}]
    return [{**item, "row": int(i), "col": int(j), "tissue": 1} for i, j in np.argwhere(tissue)]


class LoadInputPatchd(LoadPCamPatchd):
    """Dict transform: ``d["image"]``, the item's ``roi_size`` x ``roi_size`` x 3 uint8 patch, read lazily: patch
    ``index`` of a PCam file (:class:`scripts.transforms.LoadPCamPatchd`), or the patch of a slide centred on cell
    ``(row, col)`` of the ``stride`` grid (:func:`centred_patch` of :class:`SlideLevels`); ``d["patch"]`` keeps the
    raw patch (the base of a Grad-CAM overlay)."""

    def __init__(self, slides: SlideLevels, stride: int = 96, roi_size: int = PATCH) -> None:
        super().__init__(keys="file", index_key="index")
        self.slides, self.stride, self.roi_size = slides, int(stride), int(roi_size)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        if d["kind"] == "patch":
            patch = np.asarray(self._dataset(str(d["file"]))[int(d["index"])], dtype=np.uint8)
        else:
            patch = centred_patch(self.slides(d["file"]), int(d["row"]), int(d["col"]), self.stride, self.roi_size)
        d["image"], d["patch"] = patch, patch
        return d


def write_patch(case: dict[str, Any], output_dir: str | Path, cam: GradCam | None = None) -> dict[str, Any]:
    """One item's result ``{file, kind, case, row, col, grid_h, grid_w, tissue, prob}`` (``prob``: the calibrated
    tumour probability in ``pred``, the sigmoid of the logit divided by ``temperature``); with ``cam``, a patch of a
    PCam file also gets ``<case>_gradcam.png`` (the patch, 4x, with the Grad-CAM of the tumour logit over it)."""
    prob = torch.as_tensor(case["pred"]).detach().float().cpu().reshape(-1)
    if prob.numel() != 1:
        raise ValueError(f"{case['case']}: expected one tumour probability, got {tuple(prob.shape)}")
    if cam is not None and case["kind"] == "patch":
        x = torch.as_tensor(case["image"], dtype=torch.float32)[None]
        patch = np.asarray(torch.as_tensor(case["patch"]).cpu())
        save_png(explain_overlay(patch / 255.0, cam(x)[0]), output_path(output_dir, f"{case['case']}_gradcam.png"))
    result = {k: case[k] for k in ITEM_KEYS if k != "index"}
    return {**{k: v if isinstance(v, str) else int(v) for k, v in result.items()}, "prob": float(prob.numpy()[0])}


def finish_input(parts: list[dict[str, Any]], output_dir: str | Path, slides: SlideLevels, stride: int = 96,
                 threshold: float = 0.5) -> list[dict[str, Any]]:
    """The ``predictions.csv`` rows of one input from its items' results (:func:`write_patch`), once all are done.

    A patch file: one row per patch (label ``prob >= threshold``). A slide: writes ``<stem>_prob.tif`` (float32
    heat-map, 0 off tissue) and ``<stem>_heatmap.png`` (overlay, :func:`overlay`) under ``<output_dir>/predictions``
    and returns its row (``prob_tumour`` the highest cell, ``tumour_area_fraction`` of the tissue cells at
    ``threshold``)."""
    threshold, first = float(threshold), parts[0]
    if first["kind"] == "patch":
        return [{"case": p["case"], "kind": "patch", "prob_tumour": p["prob"], "label": int(p["prob"] >= threshold)}
                for p in parts]
    heat = np.zeros((first["grid_h"], first["grid_w"]), np.float32)
    tissue = np.zeros(heat.shape, bool)
    for p in parts:
        if p["tissue"]:
            heat[p["row"], p["col"]], tissue[p["row"], p["col"]] = p["prob"], True
    path, level = Path(first["file"]), slides.level
    with atomic_path(output_path(output_dir, f"{path.stem}_prob.tif")) as tmp:
        tifffile.imwrite(tmp, heat, photometric="minisblack", metadata={"level": level, "cell_px": int(stride)})
    save_png(overlay(slides(path), heat, int(stride)), output_path(output_dir, f"{path.stem}_heatmap.png"))
    n_tissue = int(tissue.sum())
    max_prob = float(heat.max()) if n_tissue else 0.0
    logger.info("%s: %d tissue cells, highest tumour probability %.4f", path, n_tissue, max_prob)
    return [{"case": path.stem, "kind": "slide", "prob_tumour": max_prob, "label": int(max_prob >= threshold),
             "tumour_area_fraction": float((heat[tissue] >= threshold).mean()) if n_tissue else 0.0,
             "tissue_cells": n_tissue, "heatmap_level": level, "heatmap_cell_px": int(stride)}]


def write_predictions(rows: list[dict[str, Any]], output_dir: str | Path) -> str:
    """Write ``<output_dir>/predictions.csv`` (:data:`COLUMNS`) atomically; return its path."""
    path = Path(str(output_dir)) / "predictions.csv"
    write_csv(path, rows, fieldnames=COLUMNS)
    logger.info("wrote %d rows to %s", len(rows), path)
    return str(path)
