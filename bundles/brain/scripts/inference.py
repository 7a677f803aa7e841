"""Brain inference over a folder of BraTS cases: the bundle's parts of ``inference.json``'s evaluator.

Each case folder ``I/<case>/<case>_{t1,t1ce,t2,flair}.nii.gz`` (labels, if present, are ignored) gives
``<output_dir>/predictions/<case>_pred.nii.gz``: BraTS labels {0, 1 NCR, 2 ED, 4 ET} (uint8), with the T1 file's
shape, affine and voxel size. ``inference.json`` runs MONAI's evaluator over them (:mod:`common.inference`): a case
with a bad input is reported and skipped, the others are still predicted, and the run then fails naming every bad
case. Files are written atomically.
With ``--uncertainty true`` each case also gets ``<case>_uncertainty.nii.gz`` (float32, nats) and
``<output_dir>/uncertainty.csv`` one row (:mod:`common.uncertainty`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.inference import output_path
from common.inputs import case_folders
from common.io import save_nifti
from common.uncertainty import case_score, write_entropy_nifti, write_uncertainty_csv

from .data import case_item, validate_items

logger = logging.getLogger(__name__)

LAYOUT = "expected <case>/<case>_{t1,t1ce,t2,flair}.nii.gz"


def list_inputs(input_dir: str) -> list[Path]:
    """The case folders directly in ``input_dir``; every file there is named in a warning (:mod:`common.inputs`).

    Raises:
        common.validation.DatasetError: ``input_dir`` is missing or holds no case folder.
    """
    return case_folders(input_dir, LAYOUT, "case", what="brain inference input")


def case_items(case_dir: Path) -> dict[str, Any]:
    """The item ``{"case", "image": [4 paths], "reference": T1 path}`` of one case folder, every file checked
    (readable, one geometry, no NaN) before the case is predicted.

    Raises:
        common.validation.DatasetError: naming the case and the file.
    """
    item = case_item(case_dir, with_label=False)
    validate_items([item], f"brain case {case_dir}")
    return {**item, "reference": item["image"][0]}


def write_uncertainty(case: str, uncertainty: Any, label: np.ndarray, reference: Any, folder: Path,
                      band: int = 2) -> dict[str, Any]:
    """Write ``<case>_uncertainty.nii.gz`` (float32, nats, the input's geometry) into ``folder``; return the case's
    ``uncertainty.csv`` row (mean entropy over the predicted tumour and a ``band``-voxel boundary band).

    Args:
        uncertainty: ``(H, W, D)`` (or ``(1, H, W, D)``) entropy in nats: the sum of the three regions' binary
            entropies of the TTA mean probability (:class:`common.uncertainty.PredictiveEntropyd`).
        label: ``(H, W, D)`` BraTS labels; the foreground is ``label > 0``.
    """
    h = np.asarray(torch.as_tensor(uncertainty).detach().cpu().numpy(), dtype=np.float32).reshape(label.shape)
    write_entropy_nifti(h, reference, folder / f"{case}_uncertainty.nii.gz")
    return {"case": case, "uncertainty_score": case_score(h, label > 0, band), "band_voxels": band, "unit": "nats"}


def write_case(case: dict[str, Any], output_dir: str) -> dict[str, Any] | None:
    """Write one case's label map (``pred``, 1HWD after ``postprocessing``) as ``<case>_pred.nii.gz`` in the T1
    file's geometry, and with uncertainty on (an ``uncertainty`` entry, 1HWD nats) ``<case>_uncertainty.nii.gz``
    beside it; returns the case's ``uncertainty.csv`` row, or None without uncertainty.

    Raises:
        RuntimeError: the label map's shape differs from the input's (never written).
    """
    from common.geometry import load

    label = np.asarray(torch.as_tensor(case["pred"]).detach().cpu().numpy()[0], dtype=np.uint8)
    reference = load(case["reference"])  # the geometry the network input was resampled from
    if label.shape != reference.shape:
        raise RuntimeError(f"prediction shape {label.shape} differs from the input {reference.shape}")
    path = output_path(output_dir, f"{case['case']}_pred.nii.gz")
    save_nifti(label, reference.affine, path, header=reference.header)
    logger.info("%s: %s", case["case"], path)
    if case.get("uncertainty") is None:
        return None
    return write_uncertainty(str(case["case"]), case["uncertainty"], label, reference, path.parent)


def finish(rows: list[dict[str, Any]], output_dir: str) -> None:
    """Write ``<output_dir>/uncertainty.csv`` (one row per predicted case; only with uncertainty on: the rows)."""
    write_uncertainty_csv(output_dir, rows)
