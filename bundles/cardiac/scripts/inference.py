"""Cardiac inference over a folder of ACDC patients: the bundle's parts of ``inference.json``'s evaluator.

Each patient folder ``I/<patient>/`` (``Info.cfg`` + ED/ES frames; labels, if present, are ignored) gives
``<output_dir>/predictions/<patient>_frameXX_seg.nii.gz`` for its ED and ES frames (uint8 labels 0 background,
1 RV, 2 MYO, 3 LV; the input's affine and shape) and one row of ``<output_dir>/clinical.csv``. ``inference.json``
runs MONAI's evaluator over the ED and ES volumes (:mod:`common.inference`): a bad patient is reported and skipped,
the others are still predicted, and the run then fails naming it; a patient's masks are written only when both
phases were predicted, so nothing is half-written.

With ``--uncertainty true`` each mask also gets ``<frame>_uncertainty.nii.gz`` beside it (predictive entropy of the
TTA mean probability, float32, nats, the input's geometry), ``clinical.csv`` gets the conformal 95 % interval
columns of :mod:`scripts.conformal` (calibrated at the end of training, read from ``models/model.json``) and
``<output_dir>/uncertainty.csv`` one row per patient (:mod:`common.uncertainty`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.geometry import load, voxel_sizes
from common.inference import output_path
from common.inputs import case_folders
from common.io import save_nifti, write_csv
from common.uncertainty import case_score, write_entropy_nifti, write_uncertainty_csv
from common.validation import Problems
from scripts.clinical import CLINICAL_COLUMNS, clinical_indices
from scripts.conformal import INTERVAL_COLUMNS, interval_columns, tta_spreads
from scripts.data import check_patient

logger = logging.getLogger(__name__)

LAYOUT = "expected <patient>/Info.cfg + ED/ES frames"
#: key of a patient's row (as :class:`PatientWriter` returns it) holding its ``uncertainty.csv`` row
UNCERTAINTY_ROW = "uncertainty_row"


def list_inputs(input_dir: str) -> list[Path]:
    """The patient folders directly in ``input_dir``; every file there is named in a warning (:mod:`common.inputs`).

    Raises:
        common.validation.DatasetError: ``input_dir`` is missing or holds no patient folder.
    """
    return case_folders(input_dir, LAYOUT, "patient", what="cardiac inference input")


def case_items(patient_dir: Path) -> list[dict[str, Any]]:
    """The ED and ES items ``{"image", "patient", "phase", "reference": the image path}`` of one patient folder,
    checked before any compute.

    Raises:
        common.validation.DatasetError: ``Info.cfg`` or a frame is missing or bad (naming the patient and file).
    """
    problems = Problems(f"cardiac input patient {patient_dir.name}")
    items = check_patient(Path(patient_dir), problems, need_labels=False)
    problems.raise_if_any()
    return [{**item, "reference": item["image"]} for item in items]


class PatientWriter:
    """``write`` of the :class:`common.inference.CaseWriter`: keeps a patient's first phase and, when the second
    arrives, writes both masks as ``<frame>_seg.nii.gz`` (the input's affine, shape and header, uint8) and returns
    the patient's ``clinical.csv`` row (:func:`scripts.clinical.clinical_indices`, ED voxel spacing).

    With uncertainty on (the postprocessing's ``uncertainty`` entry, 1HWD nats, and the TTA ``sample_counts`` of
    ``inferer``, read when each phase is written), each mask gets ``<frame>_uncertainty.nii.gz`` beside it, the row
    gets the conformal interval columns (:data:`scripts.conformal.INTERVAL_COLUMNS`, from ``conformal``: the
    settings :func:`common.uncertainty.require_conformal` read from ``model.json``) and, under
    :data:`UNCERTAINTY_ROW`, the patient's ``uncertainty.csv`` row (:func:`uncertainty_row`).

    Args:
        output_dir: the run's output folder.
        inferer: the :class:`common.uncertainty.TTAInferer` of the evaluator (its ``sample_counts``), or None.
        conformal: the conformal settings, or None (uncertainty off).

    Raises:
        RuntimeError: a mask's shape differs from its input's (nothing of that patient is written).
        common.checkpoint.CheckpointError: an uncertainty map without ``conformal`` settings or TTA sample counts
            (never an uncalibrated interval; nothing of that patient is written).
    """

    def __init__(self, output_dir: str, inferer: Any = None, conformal: dict[str, Any] | None = None) -> None:
        self.output_dir = str(output_dir)
        self.inferer, self.conformal = inferer, conformal
        self.pending: dict[str, dict[str, dict[str, Any]]] = {}

    def __call__(self, case: dict[str, Any]) -> dict[str, Any] | None:
        label = np.asarray(torch.as_tensor(case["pred"]).detach().cpu().numpy()[0]).astype(np.uint8)
        reference = load(case["reference"])  # the geometry the network input was resampled from
        if label.shape != reference.shape[:3]:
            raise RuntimeError(f"{case['reference']}: prediction shape {label.shape} differs from input "
                               f"{reference.shape}")
        frame: dict[str, Any] = {"label": label, "reference": reference, "path": case["reference"]}
        if case.get("uncertainty") is not None:
            frame["uncertainty"] = np.asarray(torch.as_tensor(case["uncertainty"]).detach().cpu().numpy()[0],
                                              dtype=np.float32)
            counts = getattr(self.inferer, "sample_counts", None)  # this phase's TTA samples (batch of one)
            frame["sample_counts"] = None if counts is None else counts[:, 0].numpy()
        phases = self.pending.setdefault(case["patient"], {})
        phases[case["phase"]] = frame
        if len(phases) < 2:
            return None
        del self.pending[case["patient"]]
        spacing = list(voxel_sizes(phases["ED"]["reference"]))
        row = clinical_indices(phases["ED"]["label"], phases["ES"]["label"], spacing, case["patient"])
        with_uncertainty = all("uncertainty" in f for f in phases.values())
        if with_uncertainty:  # intervals before any file: a refusal leaves nothing of this patient
            row.update(self.interval_columns(phases, row))
        for frame in phases.values():  # both phases predicted: only now write
            reference = frame["reference"]
            header = reference.header.copy()
            header.set_data_dtype(np.uint8)
            stem = Path(frame["path"]).name[: -len(".nii.gz")]
            save_nifti(frame["label"], reference.affine, output_path(self.output_dir, f"{stem}_seg.nii.gz"), header)
            if with_uncertainty:
                write_entropy_nifti(frame["uncertainty"], reference,
                                    output_path(self.output_dir, f"{stem}_uncertainty.nii.gz"))
        logger.info("%s: ED and ES masks written to %s", case["patient"], output_path(self.output_dir, ""))
        if with_uncertainty:
            row[UNCERTAINTY_ROW] = uncertainty_row(case["patient"], phases)
        return row

    def interval_columns(self, phases: dict[str, dict[str, Any]], row: dict[str, Any]) -> dict[str, Any]:
        """The conformal interval columns of one patient's clinical.csv row from its ED/ES TTA sample counts.

        Raises:
            common.checkpoint.CheckpointError: no ``conformal`` settings or no TTA sample counts.
        """
        from common.checkpoint import CheckpointError

        if self.conformal is None:
            raise CheckpointError("uncertainty was computed but no conformal settings were given: refusing to write "
                                  "clinical intervals without their calibration")
        if any(f.get("sample_counts") is None for f in phases.values()):
            raise CheckpointError("uncertainty was computed without TTA sample counts (the inferer is not a "
                                  "common.uncertainty.TTAInferer): refusing to write clinical intervals")
        spreads = tta_spreads(phases["ED"]["sample_counts"], phases["ES"]["sample_counts"], row)
        return interval_columns(row, spreads, self.conformal)


def uncertainty_row(patient: str, frames: dict[str, dict[str, Any]], band: int = 2) -> dict[str, Any]:
    """The ``uncertainty.csv`` row of a patient: the case score (mean entropy in nats over the predicted heart and
    an in-plane band of ``band`` voxels around it, :func:`common.uncertainty.case_score`) of both frames together
    and of each."""
    scores = {p: case_score(f["uncertainty"], f["label"] > 0, band, axes=(0, 1)) for p, f in frames.items()}
    both = case_score(np.stack([frames[p]["uncertainty"] for p in ("ED", "ES")]),
                      np.stack([frames[p]["label"] > 0 for p in ("ED", "ES")]), band, axes=(1, 2))
    return {"patient": patient, "uncertainty_score": both, "uncertainty_score_ed": scores["ED"],
            "uncertainty_score_es": scores["ES"], "band_voxels": band, "unit": "nats"}


def write_clinical(rows: list[dict[str, Any]], output_dir: str) -> str:
    """Write ``<output_dir>/clinical.csv`` (one row per patient that succeeded, :data:`CLINICAL_COLUMNS`, plus
    :data:`scripts.conformal.INTERVAL_COLUMNS` with uncertainty on) and, with uncertainty on,
    ``<output_dir>/uncertainty.csv`` (the rows' :data:`UNCERTAINTY_ROW` entries)."""
    uncertainty_rows = [r[UNCERTAINTY_ROW] for r in rows if r.get(UNCERTAINTY_ROW) is not None]
    clinical = [{k: v for k, v in r.items() if k != UNCERTAINTY_ROW} for r in rows]
    path = Path(str(output_dir)) / "clinical.csv"
    write_csv(path, clinical, CLINICAL_COLUMNS + (INTERVAL_COLUMNS if uncertainty_rows else []))
    written = write_uncertainty_csv(output_dir, uncertainty_rows)
    logger.info("clinical indices of %d patient(s) written to %s%s", len(rows), path,
                f", uncertainty to {written}" if written else "")
    return str(path)
