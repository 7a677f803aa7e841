"""Inference over a folder of ACDC patients: ED/ES label maps as NIfTI (input affine and shape) and clinical.csv."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.checkpoint import load_network_weights
from common.geometry import load, voxel_sizes
from common.inputs import folders_only, list_input_folder
from common.io import save_nifti, write_csv
from common.validation import Problems, run_each
from scripts.clinical import CLINICAL_COLUMNS, clinical_indices
from scripts.data import check_patient

logger = logging.getLogger(__name__)


def predict_volume(path: str, network: torch.nn.Module, preprocessing: Callable, inferer: Callable,
                   postprocessing: Callable, device: torch.device) -> np.ndarray:
    """Label map (uint8, the input's voxel grid) of one short-axis stack: preprocess, slice-wise network, invert."""
    data = preprocessing({"image": path})
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None].to(device), network)[0].cpu()
    data = postprocessing(data)
    return np.asarray(data["pred"].detach().cpu().numpy()[0]).astype(np.uint8)


def predict_patient(patient_dir: Path, output_dir: Path, network: torch.nn.Module, preprocessing: Callable,
                    inferer: Callable, postprocessing: Callable, device: torch.device) -> dict[str, Any]:
    """Check one patient, predict ED and ES, then write both masks; return the clinical.csv row."""
    problems = Problems(f"cardiac input patient {patient_dir.name}")
    items = check_patient(patient_dir, problems, need_labels=False)
    problems.raise_if_any()
    labels, headers = {}, {}
    for item in items:
        reference = load(item["image"])  # the geometry the network input was resampled from (common.geometry)
        label = predict_volume(item["image"], network, preprocessing, inferer, postprocessing, device)
        if label.shape != reference.shape[:3]:
            raise RuntimeError(f"{item['image']}: prediction shape {label.shape} differs from input {reference.shape}")
        labels[item["phase"]], headers[item["phase"]] = label, reference
    for item in items:  # both phases predicted: only now write, so a failure leaves nothing half-written
        reference = headers[item["phase"]]
        stem = Path(item["image"]).name[: -len(".nii.gz")]
        header = reference.header.copy()
        header.set_data_dtype(np.uint8)
        save_nifti(labels[item["phase"]], reference.affine, output_dir / "predictions" / f"{stem}_seg.nii.gz", header)
    spacing = list(voxel_sizes(headers["ED"]))
    return clinical_indices(labels["ED"], labels["ES"], spacing, patient_dir.name)


def run(input_dir: str, output_dir: str, ckpt_path: str, network: torch.nn.Module, preprocessing: Callable,
        inferer: Callable, postprocessing: Callable, device: torch.device) -> list[dict[str, Any]]:
    """Predict every patient folder of ``input_dir``; write ``predictions/*_seg.nii.gz`` and ``clinical.csv``.

    A bad patient does not stop the others; at the end :class:`common.validation.BatchFailure` names every failed
    patient (non-zero exit). ``clinical.csv`` holds the patients that succeeded.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        DatasetError: ``input_dir`` is missing or holds no patient folder (a file directly in it is named in a
            warning; hidden entries are ignored, :mod:`common.inputs`).
    """
    load_network_weights(network, str(ckpt_path)).eval()
    folder, out = Path(str(input_dir)), Path(str(output_dir))
    layout = "expected <patient>/Info.cfg + ED/ES frames"
    patients = list_input_folder(folder, folders_only(layout), f"patient folders ({layout})",
                                 what="cardiac inference input").predict
    rows: list[dict[str, Any]] = []
    try:
        run_each(patients, lambda p: rows.append(
            predict_patient(p, out, network, preprocessing, inferer, postprocessing, device)),
            name_of=lambda p: f"{p.name} ({p})", what="cardiac inference")
    finally:
        if rows:
            write_csv(out / "clinical.csv", rows, CLINICAL_COLUMNS)
            logger.info("wrote %d patients' masks to %s and clinical indices to %s", len(rows), out / "predictions",
                        out / "clinical.csv")
    return rows
