"""Mass detection on a folder of full mammograms: ``detections.csv`` and one overlay PNG per image.

Outputs (DESIGN.md): ``<output_dir>/detections.csv`` with ``image, x_min, y_min, x_max, y_max, label, score`` (one row
per detected mass scoring >= ``score_threshold``; pixel coordinates of the input DICOM, x = column, y = row, pixel
edges; ``label`` benign/malignant; an image with no detection has no row and is named in the log as negative) and
``<output_dir>/predictions/<stem>_detections.png`` (the mammogram with green boxes, class name and confidence, as in
the case study's figures; "no mass detected" for a negative image). One bad file does not stop the others; the run
then ends with an error naming it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.checkpoint import load_network_weights
from common.inputs import list_input_folder
from common.io import write_csv
from common.validation import Problems, check_dir, run_each
from scripts.data import csv_path
from scripts.detection import DETECTION_COLUMNS, detect, load_images, to_input_boxes
from scripts.inference import classify_input

logger = logging.getLogger(__name__)


def list_inputs(input_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Full mammograms to detect on: every DICOM file directly in ``input_dir`` (name = file stem; other entries are
    named in a warning), or, for a CBIS-DDSM folder (mass/calc CSVs, no DICOM at its top), the full mammograms of its
    test CSVs (else train; name = the CBIS-DDSM image folder, e.g. ``Mass-Test_P_00016_LEFT_CC``).

    Raises:
        common.validation.DatasetError: missing folder, nothing to predict, or unresolvable CSV rows.
    """
    problems = Problems(f"detection input folder {input_dir}")
    if not check_dir(str(input_dir), problems, "input folder", override="--input_dir"):
        problems.raise_if_any()
    root = Path(str(input_dir))
    if any(not p.name.startswith(".") and classify_input(p)[0] == "predict" for p in root.iterdir()):
        files = list_input_folder(root, classify_input, "DICOM file (*.dcm)").predict
        return [{"case": p.stem if p.suffix.lower() in (".dcm", ".dicom") else p.name, "image": str(p)} for p in files]
    split = "test" if csv_path(root, "test").is_file() else "train"
    items = load_images(root, split, problems) if csv_path(root, split).is_file() else []
    problems.check(bool(items) or bool(problems), root,
                   "no *.dcm file and no mass_case_description_{train,test}_set.csv to detect on")
    problems.raise_if_any()
    return [{"case": i["case"], "image": i["image"]} for i in items]


def save_detection_png(image: np.ndarray, detections: list[dict], path: str | os.PathLike, title: str = "") -> str:
    """The input mammogram (grey, larger = brighter) with each detection's box in green and ``<label> <score>``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from common.io import save_figure

    h, w = image.shape
    fig, ax = plt.subplots(figsize=(5, 5 * h / w))
    low, high = np.percentile(image, [0.5, 99.5])
    ax.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1)
    for d in detections:
        x0, y0, x1, y1 = d["x_min"], d["y_min"], d["x_max"], d["y_max"]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.5))
        ax.text(x0, max(y0 - 3, 0), f"{d['label']} {d['score']:.2f}", color="lime", fontsize=8, va="bottom")
    if not detections:
        ax.text(0.02, 0.98, "no mass detected", color="lime", fontsize=9, va="top", transform=ax.transAxes)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return save_figure(fig, path)


def predict(input_dir: str | os.PathLike, output_dir: str | os.PathLike, network: torch.nn.Module,
            ckpt_path: str | os.PathLike, preprocessing: Callable, device: Any = "cpu",
            score_threshold: float = 0.3, overlays: bool = True) -> str:
    """Detect masses in every input; write detections.csv (and overlays); return the CSV path.

    Raises:
        common.checkpoint.CheckpointError: missing checkpoint (never predicts from random weights).
        ValueError: ``score_threshold`` outside [0, 1].
        common.validation.DatasetError: missing or empty input folder.
        common.validation.BatchFailure: some inputs failed (the others are written); names each failed file.
    """
    from scripts.dicom import read_dicom

    score_threshold = float(score_threshold)
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}.")
    load_network_weights(network, ckpt_path).eval()  # common.checkpoint's one check: a clear CheckpointError
    items = list_inputs(input_dir)
    out = Path(str(output_dir))
    rows: list[dict[str, Any]] = []
    negatives: list[str] = []
    done: list[str] = []

    def one(item: dict[str, Any]) -> None:
        data = preprocessing({"image": item["image"]})
        found = detect(network, [data["image"]], device)[0]
        mine = []
        for d in found:
            if d["score"] < score_threshold:
                continue
            x0, y0, x1, y1 = to_input_boxes(np.asarray(d["box"])[None], data["input_shape"], data["grid_shape"])[0]
            if x1 <= x0 or y1 <= y0:
                continue  # nothing of the box left inside the image
            mine.append({"image": item["case"], "x_min": round(float(x0), 1), "y_min": round(float(y0), 1),
                         "x_max": round(float(x1), 1), "y_max": round(float(y1), 1), "label": d["label"],
                         "score": round(float(d["score"]), 4)})
        if overlays:
            save_detection_png(read_dicom(item["image"]), mine, out / "predictions" / f"{item['case']}_detections.png",
                               title=item["case"])
        if not mine:
            negatives.append(item["case"])
        rows.extend(mine)
        done.append(item["case"])

    csv_file = out / "detections.csv"
    try:
        run_each(items, one, name_of=lambda i: f"{i['case']} ({i['image']})", what="breast mass detection")
    finally:
        if done:  # an image without a detection is a valid negative: the table may have a header only
            write_csv(csv_file, rows, fieldnames=DETECTION_COLUMNS)
    named = f" ({', '.join(negatives[:10])}{', ...' if len(negatives) > 10 else ''})" if negatives else ""
    logger.info("detected %d mass(es) in %d image(s) (score >= %.2f); %d image(s) without detection%s; wrote %s",
                len(rows), len(items), score_threshold, len(negatives), named, csv_file)
    return str(csv_file)
