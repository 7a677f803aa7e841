"""Whole-volume prediction over a folder of BraTS cases, one NIfTI label map per case in the input's geometry.

Each case folder ``I/<case>/<case>_{t1,t1ce,t2,flair}.nii.gz`` (labels, if present, are ignored) gives
``<output_dir>/predictions/<case>_pred.nii.gz``: BraTS labels {0, 1 NCR, 2 ED, 4 ET} (uint8), with the T1 file's
shape, affine and voxel size. A case with a bad input is reported and skipped; the others are still predicted, and
the run then fails naming every bad case (``common.validation.run_each``). Files are written atomically.
With ``--uncertainty true`` each case also gets ``<case>_uncertainty.nii.gz`` (float32, nats) and
``<output_dir>/uncertainty.csv`` one row (:mod:`common.uncertainty`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.checkpoint import load_network_weights
from common.inputs import folders_only, list_input_folder
from common.io import save_nifti
from common.uncertainty import case_score, write_entropy_nifti, write_uncertainty_csv
from common.validation import run_each

from .data import case_item, validate_items

logger = logging.getLogger(__name__)


def predict_case(item: dict[str, Any], network: torch.nn.Module, preprocessing: Callable, inferer: Callable,
                 postprocessing: Callable, device: torch.device) -> np.ndarray:
    """The BraTS label map (HWD, uint8) of one case, in the grid of its input files."""
    return predict_case_outputs(item, network, preprocessing, inferer, postprocessing, device)["label"]


def predict_case_outputs(item: dict[str, Any], network: torch.nn.Module, preprocessing: Callable,
                         inferer: Callable, postprocessing: Callable, device: torch.device) -> dict[str, np.ndarray]:
    """``{"label"}`` of :func:`predict_case`, plus ``"uncertainty"`` (HWD float32, nats: the sum of the three
    regions' binary entropies of the TTA mean probability) when the postprocessing computed it."""
    data = preprocessing({"image": item["image"]})
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None].to(device), network)[0].cpu()
    data = postprocessing(data)
    out = {"label": np.asarray(torch.as_tensor(data["pred"]).numpy()[0], dtype=np.uint8)}
    if "uncertainty" in data:
        out["uncertainty"] = np.asarray(torch.as_tensor(data["uncertainty"]).numpy()[0], dtype=np.float32)
    return out


def write_uncertainty(case: str, outputs: dict[str, np.ndarray], reference: Any, folder: Path,
                      band: int = 2) -> dict[str, Any]:
    """Write ``<case>_uncertainty.nii.gz`` (float32, nats, the input's geometry) into ``folder``; return the case's
    ``uncertainty.csv`` row (mean entropy over the predicted tumour and a ``band``-voxel boundary band)."""
    write_entropy_nifti(outputs["uncertainty"], reference, folder / f"{case}_uncertainty.nii.gz")
    return {"case": case, "uncertainty_score": case_score(outputs["uncertainty"], outputs["label"] > 0, band),
            "band_voxels": band, "unit": "nats"}


def predict_folder(input_dir: str, output_dir: str, network: torch.nn.Module, ckpt_path: str,
                   preprocessing: Callable, inferer: Callable, postprocessing: Callable,
                   device: torch.device | str = "cpu") -> list[str]:
    """Predict every case folder of ``input_dir`` into ``<output_dir>/predictions/``.

    Raises:
        common.checkpoint.CheckpointError: ``ckpt_path`` is missing or does not fit (before any case is read).
        common.validation.DatasetError: ``input_dir`` is missing or holds no case folder (a file directly in it is
            named in a warning; hidden entries are ignored, :mod:`common.inputs`).
        common.validation.BatchFailure: after the good cases were written, naming every case that failed.
    """
    from common.geometry import load

    input_dir, output_dir, device = str(input_dir), str(output_dir), torch.device(device)
    load_network_weights(network, str(ckpt_path))
    network.to(device).eval()
    layout = "expected <case>/<case>_{t1,t1ce,t2,flair}.nii.gz"
    cases = list_input_folder(input_dir, folders_only(layout), f"case folders ({layout})",
                              what="brain inference input").predict
    out = Path(output_dir) / "predictions"

    def one(case_dir: Path) -> str:
        item = case_item(case_dir, with_label=False)
        validate_items([item], f"brain case {case_dir}")
        start = time.perf_counter()
        outputs = predict_case_outputs(item, network, preprocessing, inferer, postprocessing, device)
        label = outputs["label"]
        reference = load(item["image"][0])  # the geometry the network input was resampled from
        if label.shape != reference.shape:
            raise RuntimeError(f"prediction shape {label.shape} differs from the input {reference.shape}")
        path = out / f"{item['case']}_pred.nii.gz"
        save_nifti(label, reference.affine, path, header=reference.header)
        if "uncertainty" in outputs:
            uncertainty_rows.append(write_uncertainty(item["case"], outputs, reference, out))
        logger.info("%s: %s (%.1f s)", item["case"], path, time.perf_counter() - start)
        return str(path)

    uncertainty_rows: list[dict[str, Any]] = []
    try:
        return run_each(cases, one, name_of=lambda p: str(p), what="brain inference")
    finally:
        write_uncertainty_csv(output_dir, uncertainty_rows)
