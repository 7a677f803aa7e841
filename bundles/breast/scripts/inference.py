"""Inference over a folder of mass ROI crops (``*.dcm``) or a CBIS-DDSM folder: predictions.csv + Grad-CAM overlays.

Outputs (DESIGN.md): ``<output_dir>/predictions.csv`` with ``case, p_benign, p_malignant, label`` (calibrated
probabilities, see :func:`predict`; label 1 = malignant at ``threshold``) and, with ``explain``,
``<output_dir>/predictions/<case>_gradcam.png``: the network input with MONAI's Grad-CAM map for the malignant
class laid over it (red = evidence for malignancy; ``common.explain``). ``inference.json`` runs MONAI's evaluator over
the inputs (:mod:`common.inference`); one bad file does not stop the others, and the run then ends with an error
naming it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from common.explain import GradCam, overlay
from common.inference import output_path
from common.inputs import list_input_folder
from common.io import save_png, write_csv
from common.validation import Problems, check_dir
from scripts.data import csv_path, load_split

logger = logging.getLogger(__name__)


def classify_input(entry: Path) -> tuple[str, str]:
    """Whether an entry of the breast input folder is predicted: a DICOM file, i.e. ``*.dcm``/``*.dicom`` (any case)
    or a file with the DICOM preamble whatever its name (pydicom's ``is_dicom``); else why not (for
    :func:`common.inputs.list_input_folder`)."""
    from pydicom.misc import is_dicom

    if entry.is_dir():
        return "skip", "a folder: breast inference predicts the DICOM files directly in --input_dir"
    if entry.suffix.lower() in (".dcm", ".dicom"):
        return "predict", ""
    try:
        if is_dicom(entry):
            return "predict", ""
    except OSError as e:
        return "skip", f"not readable ({e})"
    if entry.name.startswith("mass_case_description_") and entry.suffix.lower() == ".csv":
        return "skip", "a CBIS-DDSM CSV: ignored because the folder holds DICOM files to predict"
    return "skip", "not a DICOM file (no .dcm suffix, no DICOM preamble)"


def list_inputs(input_dir: str | os.PathLike, crop_source: str = "cropped",
                full_mammograms: bool = False) -> list[dict[str, Any]]:
    """Inputs ``{"case", "image", ...}``: every DICOM file directly in ``input_dir`` (``*.dcm`` in any case, or any
    file with the DICOM preamble; case = file stem; every other entry is named in a warning), or, for a CBIS-DDSM
    folder (one with the mass CSVs and no DICOM file at its top), what its test CSV (else its train CSV) names:
    the ROI crops (case = CBIS-DDSM ROI folder name; ``pathology`` is ignored; a row whose files cannot be resolved
    is an error naming the row), or with ``full_mammograms`` (the detection workflow) the full mammograms, one item
    each ``{"case", "image"}`` (case = CBIS-DDSM image folder, e.g. ``Mass-Test_P_00016_LEFT_CC``; mass-free images of
    the calcification CSV included; rows checked as :func:`scripts.detection.load_images` checks them).

    Raises:
        common.validation.DatasetError: missing folder, nothing to predict, or unresolvable CSV rows.
    """
    what = "detection input folder" if full_mammograms else "inference input folder"
    problems = Problems(f"{what} {input_dir}")
    if not check_dir(str(input_dir), problems, "input folder", override="--input_dir"):
        problems.raise_if_any()
    root = Path(str(input_dir))
    if any(not p.name.startswith(".") and classify_input(p)[0] == "predict" for p in root.iterdir()):
        files = list_input_folder(root, classify_input, "DICOM file (*.dcm)").predict
        return [{"case": p.stem if p.suffix.lower() in (".dcm", ".dicom") else p.name, "image": str(p)} for p in files]
    items: list[dict[str, Any]] = []
    split = "test" if csv_path(root, "test").is_file() else "train"  # a CBIS-DDSM folder: its test CSV first
    if csv_path(root, split).is_file() and full_mammograms:
        from scripts.detection import load_images

        items = [{"case": i["case"], "image": i["image"]} for i in load_images(root, split, problems)]
    elif csv_path(root, split).is_file():
        items = load_split(root, split, crop_source, problems, check_files=False, need_labels=False, strict_rows=True)
    problems.check(bool(items) or bool(problems), root, "no *.dcm file and no mass_case_description_{train,test}"
                   f"_set.csv to {'detect on' if full_mammograms else 'predict'}")
    problems.raise_if_any()
    return items


def write_case(case: dict[str, Any], output_dir: str | os.PathLike, threshold: float = 0.5,
               cam: GradCam | None = None) -> dict[str, Any]:
    """One mass's ``predictions.csv`` row ``{case, p_benign, p_malignant, label}`` from ``pred`` (the two calibrated
    probabilities after ``postprocessing``: softmax of the logits divided by ``temperature``); label 1 when
    p_malignant >= ``threshold``. With ``cam``, also writes ``<case>_gradcam.png``: the network input (``image``,
    1xHxW) with the Grad-CAM map of the malignant class over it."""
    prob = torch.as_tensor(case["pred"]).detach().float().cpu().reshape(-1).numpy()
    if prob.shape != (2,):
        raise ValueError(f"{case['case']}: expected 2 class probabilities, got shape {tuple(prob.shape)}")
    if cam is not None:
        x = torch.as_tensor(case["image"], dtype=torch.float32)[None]
        save_png(overlay(x[0, 0].detach().cpu().numpy(), cam(x)[0]),
                 output_path(output_dir, f"{case['case']}_gradcam.png"))
    logger.info("%s: p_malignant %.4f", case["case"], prob[1])
    return {"case": case["case"], "p_benign": float(prob[0]), "p_malignant": float(prob[1]),
            "label": int(prob[1] >= float(threshold))}


def write_predictions(rows: list[dict[str, Any]], output_dir: str | os.PathLike) -> str:
    """Write ``<output_dir>/predictions.csv`` (``case, p_benign, p_malignant, label``) atomically; return its path."""
    path = Path(str(output_dir)) / "predictions.csv"
    write_csv(path, rows, fieldnames=["case", "p_benign", "p_malignant", "label"])
    logger.info("predicted %d masses; wrote %s", len(rows), path)
    return str(path)
