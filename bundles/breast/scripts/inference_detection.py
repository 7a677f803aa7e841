"""Mass detection on a folder of full mammograms: ``detections.csv`` and one overlay PNG per image.

Outputs (DESIGN.md): ``<output_dir>/detections.csv`` with ``image, x_min, y_min, x_max, y_max, label, score`` (one row
per detected mass scoring >= ``score_threshold``; pixel coordinates of the input DICOM, x = column, y = row, pixel
edges; ``label`` benign/malignant; an image with no detection has no row and is named in the log as negative) and
``<output_dir>/predictions/<stem>_detections.png`` (the mammogram with green boxes, class name and confidence, as in
the case study's figures; "no mass detected" for a negative image). ``inference_detection.json`` runs MONAI's
evaluator over the inputs (:mod:`common.inference`: inputs listed by ``scripts.inference.list_inputs``, detections by
:class:`scripts.detection.DetectionInferer` mapped to input pixels by :class:`scripts.detection.InputDetectionsd`);
:func:`write_case` and :func:`write_detections` are its ``CaseWriter``'s ``write`` and ``finish``. One bad file does
not stop the others; the run then ends with an error naming it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.inference import output_path
from common.io import write_csv
from scripts.detection import DETECTION_COLUMNS

logger = logging.getLogger(__name__)


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


def write_case(case: dict[str, Any], output_dir: str | os.PathLike, overlays: bool = True) -> dict[str, Any]:
    """One mammogram's ``detections.csv`` rows from ``pred`` (:class:`scripts.detection.InputDetectionsd`'s
    detections in input pixels: coordinates rounded to 0.1 pixel, scores to 4 decimals) and, with ``overlays``, its
    ``predictions/<case>_detections.png`` drawn over the input DICOM (``path``). Returns
    ``{"image": case, "detections": [row, ...]}`` (an empty list for a negative image)."""
    from scripts.dicom import read_dicom

    rows = [{"image": case["case"], **{k: round(float(d[k]), 1) for k in ("x_min", "y_min", "x_max", "y_max")},
             "label": d["label"], "score": round(float(d["score"]), 4)} for d in case["pred"]]
    if overlays:
        save_detection_png(read_dicom(case["path"]), rows, output_path(output_dir, f"{case['case']}_detections.png"),
                           title=case["case"])
    return {"image": case["case"], "detections": rows}


def write_detections(images: list[dict[str, Any]], output_dir: str | os.PathLike,
                     score_threshold: float = 0.3) -> str:
    """Write ``<output_dir>/detections.csv`` atomically from :func:`write_case`'s results (every image that was
    detected on; a table of negatives only has the header); log the images without a detection; return its path."""
    rows = [row for image in images for row in image["detections"]]
    negatives = [image["image"] for image in images if not image["detections"]]
    path = Path(str(output_dir)) / "detections.csv"
    write_csv(path, rows, fieldnames=DETECTION_COLUMNS)
    named = f" ({', '.join(negatives[:10])}{', ...' if len(negatives) > 10 else ''})" if negatives else ""
    logger.info("detected %d mass(es) in %d image(s) (score >= %.2f); %d image(s) without detection%s; wrote %s",
                len(rows), len(images), float(score_threshold), len(negatives), named, path)
    return str(path)
