"""Inference over a folder of mass ROI crops (``*.dcm``) or a CBIS-DDSM folder: predictions.csv + Grad-CAM overlays.

Outputs (DESIGN.md): ``<output_dir>/predictions.csv`` with ``case, p_benign, p_malignant, label`` (calibrated
probabilities, see :func:`predict`; label 1 = malignant at ``threshold``) and, with ``explain``,
``<output_dir>/predictions/<case>_gradcam.png``: the network input with MONAI's Grad-CAM map for the malignant
class laid over it (red = evidence for malignancy; ``common.explain``). One bad file does not stop the others; the
run then ends with an error naming it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import load_network_weights, unwrap
from common.explain import GradCam, enabled, overlay
from common.inputs import list_input_folder
from common.io import save_png, write_csv
from common.validation import Problems, check_dir, run_each
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


def list_inputs(input_dir: str | os.PathLike, crop_source: str = "cropped") -> list[dict[str, Any]]:
    """Inputs: every DICOM file directly in ``input_dir`` (``*.dcm`` in any case, or any file with the DICOM
    preamble; case = file stem; every other entry is named in a warning), or, for a CBIS-DDSM folder (one with the
    mass CSVs and no DICOM file at its top), the ROI crops its test CSV (else its train CSV) names (case = CBIS-DDSM
    ROI folder name; ``pathology`` is ignored; a row whose files cannot be resolved is an error naming the row).

    Raises:
        common.validation.DatasetError: missing folder, nothing to predict, or unresolvable CSV rows.
    """
    problems = Problems(f"inference input folder {input_dir}")
    if not check_dir(str(input_dir), problems, "input folder", override="--input_dir"):
        problems.raise_if_any()
    root = Path(str(input_dir))
    if any(not p.name.startswith(".") and classify_input(p)[0] == "predict" for p in root.iterdir()):
        files = list_input_folder(root, classify_input, "DICOM file (*.dcm)").predict
        return [{"case": p.stem if p.suffix.lower() in (".dcm", ".dicom") else p.name, "image": str(p)} for p in files]
    items: list[dict[str, Any]] = []
    split = "test" if csv_path(root, "test").is_file() else "train"  # a CBIS-DDSM folder: its test CSV first
    if csv_path(root, split).is_file():
        items = load_split(root, split, crop_source, problems, check_files=False, need_labels=False, strict_rows=True)
    problems.check(bool(items) or bool(problems), root,
                   "no *.dcm file and no mass_case_description_{train,test}_set.csv to predict")
    problems.raise_if_any()
    return items


def predict(input_dir: str | os.PathLike, output_dir: str | os.PathLike, network: torch.nn.Module,
            ckpt_path: str | os.PathLike, preprocessing: Callable, inferer: Callable, postprocessing: Callable,
            device: Any = "cpu", threshold: float = 0.5, explain: bool | str = True,
            explain_layer: str = "features.4.relu", crop_source: str = "cropped", temperature: float = 1.0) -> str:
    """Predict p(malignant) for every input; write predictions.csv (and Grad-CAM PNGs); return the CSV path.

    The probabilities are calibrated: ``postprocessing`` (softmax) of the logits divided by ``temperature`` (fitted
    on the validation split at training, ``model.json``); ``label`` is 1 when p_malignant >= ``threshold``.

    Raises:
        FileNotFoundError: missing checkpoint (never predicts from random weights).
        common.validation.DatasetError: missing or empty input folder.
        common.validation.BatchFailure: some inputs failed (the others are written); names each failed file.
    """
    load_network_weights(network, ckpt_path).eval()
    items = list_inputs(input_dir, crop_source)
    out = Path(str(output_dir))
    temperature, threshold = float(temperature), float(threshold)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature} (from {ckpt_path} or --temperature)")
    # the eager network (inside a common.backends wrapper): Grad-CAM needs its layers and gradients
    cam = GradCam(unwrap(network), explain_layer, class_idx=1) if enabled(explain) else None
    rows: list[dict[str, Any]] = []

    def one(item: dict[str, Any]) -> None:
        image = preprocessing(dict(item))["image"]
        x = torch.as_tensor(image, dtype=torch.float32)[None].to(device)
        with torch.no_grad():
            prob = postprocessing(inferer(x, network)[0] / temperature).float().cpu().numpy()
        if cam is not None:
            save_png(overlay(x[0, 0].cpu().numpy(), cam(x)[0]), out / "predictions" / f"{item['case']}_gradcam.png")
        rows.append({"case": item["case"], "p_benign": float(prob[0]), "p_malignant": float(prob[1]),
                     "label": int(prob[1] >= threshold)})

    csv_file = out / "predictions.csv"
    try:
        run_each(items, one, name_of=lambda i: f"{i['case']} ({i.get('image', i.get('full'))})",
                 what="breast inference")
    finally:
        if rows:
            write_csv(csv_file, rows, fieldnames=["case", "p_benign", "p_malignant", "label"])
    logger.info("predicted %d masses; wrote %s", len(rows), csv_file)
    return str(csv_file)
