"""Cardiac inference over a folder of ACDC patients: the bundle's parts of ``inference.json``'s evaluator.

Each patient folder ``I/<patient>/`` (``Info.cfg`` + ED/ES frames; labels, if present, are ignored) gives
``<output_dir>/predictions/<patient>_frameXX_seg.nii.gz`` for its ED and ES frames (uint8 labels 0 background,
1 RV, 2 MYO, 3 LV; the input's affine and shape) and one row of ``<output_dir>/clinical.csv``. ``inference.json``
runs MONAI's evaluator over the ED and ES volumes (:mod:`common.inference`): a bad patient is reported and skipped,
the others are still predicted, and the run then fails naming it; a patient's masks are written only when both
phases were predicted, so nothing is half-written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.geometry import load, voxel_sizes
from common.inference import output_path
from common.inputs import folders_only, list_input_folder
from common.io import save_nifti, write_csv
from common.validation import Problems
from scripts.clinical import CLINICAL_COLUMNS, clinical_indices
from scripts.data import check_patient

logger = logging.getLogger(__name__)

LAYOUT = "expected <patient>/Info.cfg + ED/ES frames"


def list_inputs(input_dir: str) -> list[Path]:
    """The patient folders directly in ``input_dir``; every file there is named in a warning (:mod:`common.inputs`).

    Raises:
        common.validation.DatasetError: ``input_dir`` is missing or holds no patient folder.
    """
    return list_input_folder(str(input_dir), folders_only(LAYOUT), f"patient folders ({LAYOUT})",
                             what="cardiac inference input").predict


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

    Raises:
        RuntimeError: a mask's shape differs from its input's (nothing of that patient is written).
    """

    def __init__(self, output_dir: str) -> None:
        self.output_dir = str(output_dir)
        self.pending: dict[str, dict[str, tuple[np.ndarray, Any, str]]] = {}

    def __call__(self, case: dict[str, Any]) -> dict[str, Any] | None:
        label = np.asarray(torch.as_tensor(case["pred"]).detach().cpu().numpy()[0]).astype(np.uint8)
        reference = load(case["reference"])  # the geometry the network input was resampled from
        if label.shape != reference.shape[:3]:
            raise RuntimeError(f"{case['reference']}: prediction shape {label.shape} differs from input "
                               f"{reference.shape}")
        phases = self.pending.setdefault(case["patient"], {})
        phases[case["phase"]] = (label, reference, case["reference"])
        if len(phases) < 2:
            return None
        del self.pending[case["patient"]]
        for label, reference, path in phases.values():  # both phases predicted: only now write
            header = reference.header.copy()
            header.set_data_dtype(np.uint8)
            stem = Path(path).name[: -len(".nii.gz")]
            save_nifti(label, reference.affine, output_path(self.output_dir, f"{stem}_seg.nii.gz"), header)
        logger.info("%s: ED and ES masks written to %s", case["patient"], output_path(self.output_dir, ""))
        spacing = list(voxel_sizes(phases["ED"][1]))
        return clinical_indices(phases["ED"][0], phases["ES"][0], spacing, case["patient"])


def write_clinical(rows: list[dict[str, Any]], output_dir: str) -> str:
    """Write ``<output_dir>/clinical.csv`` (one row per patient that succeeded, :data:`CLINICAL_COLUMNS`)."""
    path = Path(str(output_dir)) / "clinical.csv"
    write_csv(path, rows, CLINICAL_COLUMNS)
    logger.info("clinical indices of %d patient(s) written to %s", len(rows), path)
    return str(path)
