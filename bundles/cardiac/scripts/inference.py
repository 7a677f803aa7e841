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
from common.uncertainty import case_score, write_entropy_nifti, write_uncertainty_csv
from common.validation import Problems, run_each
from scripts.clinical import CLINICAL_COLUMNS, clinical_indices
from scripts.conformal import INTERVAL_COLUMNS, interval_columns, tta_spreads
from scripts.data import check_patient, require_checkpoint

logger = logging.getLogger(__name__)


def predict_volume(path: str, network: torch.nn.Module, preprocessing: Callable, inferer: Callable,
                   postprocessing: Callable, device: torch.device) -> np.ndarray:
    """Label map (uint8, the input's voxel grid) of one short-axis stack: preprocess, slice-wise network, invert."""
    return predict_frame(path, network, preprocessing, inferer, postprocessing, device)["label"]


def predict_frame(path: str, network: torch.nn.Module, preprocessing: Callable, inferer: Callable,
                  postprocessing: Callable, device: torch.device) -> dict[str, Any]:
    """``{"label"}`` (uint8, the input's grid) of one stack, plus, when the postprocessing computed one
    (``--uncertainty true``), ``"uncertainty"`` (entropy in nats, the input's grid) and ``"sample_counts"``
    (``(S, 4)`` voxels per class in each TTA sample, :class:`common.uncertainty.TTAInferer`)."""
    data = preprocessing({"image": path})
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None].to(device), network)[0].cpu()
    counts = getattr(inferer, "sample_counts", None)
    data = postprocessing(data)
    out = {"label": np.asarray(data["pred"].detach().cpu().numpy()[0]).astype(np.uint8)}
    if "uncertainty" in data:
        out["uncertainty"] = np.asarray(data["uncertainty"].detach().cpu().numpy()[0], dtype=np.float32)
        out["sample_counts"] = None if counts is None else counts[:, 0].numpy()
    return out


def predict_patient(patient_dir: Path, output_dir: Path, network: torch.nn.Module, preprocessing: Callable,
                    inferer: Callable, postprocessing: Callable, device: torch.device,
                    conformal: dict[str, Any] | None = None, uncertainty_rows: list | None = None) -> dict[str, Any]:
    """Check one patient, predict ED and ES, then write both masks; return the clinical.csv row.

    With uncertainty (the postprocessing computes it), each mask gets ``<stem>_uncertainty.nii.gz`` beside it, the
    row gets the conformal intervals of :mod:`scripts.conformal` (``conformal`` settings required), and the
    patient's ``uncertainty.csv`` row is appended to ``uncertainty_rows``.

    Raises:
        common.checkpoint.CheckpointError: uncertainty without ``conformal`` settings (never an uncalibrated
            interval).
    """
    problems = Problems(f"cardiac input patient {patient_dir.name}")
    items = check_patient(patient_dir, problems, need_labels=False)
    problems.raise_if_any()
    frames, headers = {}, {}
    for item in items:
        reference = load(item["image"])  # the geometry the network input was resampled from (common.geometry)
        frame = predict_frame(item["image"], network, preprocessing, inferer, postprocessing, device)
        if frame["label"].shape != reference.shape[:3]:
            raise RuntimeError(f"{item['image']}: prediction shape {frame['label'].shape} differs from input "
                               f"{reference.shape}")
        frames[item["phase"]], headers[item["phase"]] = frame, reference
    spacing = list(voxel_sizes(headers["ED"]))
    row = clinical_indices(frames["ED"]["label"], frames["ES"]["label"], spacing, patient_dir.name)
    with_uncertainty = all("uncertainty" in f for f in frames.values())
    if with_uncertainty:
        row.update(uncertainty_columns(frames, row, conformal))
    for item in items:  # both phases predicted: only now write, so a failure leaves nothing half-written
        reference = headers[item["phase"]]
        stem = Path(item["image"]).name[: -len(".nii.gz")]
        header = reference.header.copy()
        header.set_data_dtype(np.uint8)
        save_nifti(frames[item["phase"]]["label"], reference.affine, output_dir / "predictions" / f"{stem}_seg.nii.gz",
                   header)
        if with_uncertainty:
            write_entropy_nifti(frames[item["phase"]]["uncertainty"], reference,
                                output_dir / "predictions" / f"{stem}_uncertainty.nii.gz")
    if with_uncertainty and uncertainty_rows is not None:
        uncertainty_rows.append(uncertainty_row(patient_dir.name, frames))
    return row


def uncertainty_columns(frames: dict[str, dict[str, Any]], row: dict[str, Any],
                        conformal: dict[str, Any] | None) -> dict[str, Any]:
    """The conformal interval columns of one patient's clinical.csv row from its ED/ES TTA sample counts.

    Raises:
        common.checkpoint.CheckpointError: no ``conformal`` settings.
    """
    if conformal is None:
        from common.checkpoint import CheckpointError

        raise CheckpointError("uncertainty was computed but no conformal settings were given: refusing to write "
                              "clinical intervals without their calibration")
    spreads = tta_spreads(frames["ED"]["sample_counts"], frames["ES"]["sample_counts"], row)
    return interval_columns(row, spreads, conformal)


def uncertainty_row(patient: str, frames: dict[str, dict[str, Any]], band: int = 2) -> dict[str, Any]:
    """The ``uncertainty.csv`` row of a patient: the case score (mean entropy in nats over the predicted heart and
    an in-plane band of ``band`` voxels around it, :func:`common.uncertainty.case_score`) of both frames together
    and of each."""
    scores = {p: case_score(f["uncertainty"], f["label"] > 0, band, axes=(0, 1)) for p, f in frames.items()}
    both = case_score(np.stack([frames[p]["uncertainty"] for p in ("ED", "ES")]),
                      np.stack([frames[p]["label"] > 0 for p in ("ED", "ES")]), band, axes=(1, 2))
    return {"patient": patient, "uncertainty_score": both, "uncertainty_score_ed": scores["ED"],
            "uncertainty_score_es": scores["ES"], "band_voxels": band, "unit": "nats"}


def run(input_dir: str, output_dir: str, ckpt_path: str, network: torch.nn.Module, preprocessing: Callable,
        inferer: Callable, postprocessing: Callable, device: torch.device,
        conformal: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Predict every patient folder of ``input_dir``; write ``predictions/*_seg.nii.gz`` and ``clinical.csv``.

    A bad patient does not stop the others; at the end :class:`common.validation.BatchFailure` names every failed
    patient (non-zero exit). ``clinical.csv`` holds the patients that succeeded.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        DatasetError: ``input_dir`` is missing or holds no patient folder (a file directly in it is named in a
            warning; hidden entries are ignored, :mod:`common.inputs`).
    """
    require_checkpoint(str(ckpt_path))
    load_network_weights(network, str(ckpt_path)).eval()
    folder, out = Path(str(input_dir)), Path(str(output_dir))
    layout = "expected <patient>/Info.cfg + ED/ES frames"
    patients = list_input_folder(folder, folders_only(layout), f"patient folders ({layout})",
                                 what="cardiac inference input").predict
    rows: list[dict[str, Any]] = []
    uncertainty_rows: list[dict[str, Any]] = []
    try:
        run_each(patients, lambda p: rows.append(
            predict_patient(p, out, network, preprocessing, inferer, postprocessing, device, conformal,
                            uncertainty_rows)),
            name_of=lambda p: f"{p.name} ({p})", what="cardiac inference")
    finally:
        if rows:
            write_csv(out / "clinical.csv", rows, CLINICAL_COLUMNS + (INTERVAL_COLUMNS if uncertainty_rows else []))
            write_uncertainty_csv(out, uncertainty_rows)
            logger.info("wrote %d patients' masks to %s and clinical indices to %s", len(rows), out / "predictions",
                        out / "clinical.csv")
    return rows
