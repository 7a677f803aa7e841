"""Per-case rows ``{"case", "label", "p_malignant", "predicted", ...}``, the ROC plot and Grad-CAM faithfulness.

The benign/malignant metrics of ``evaluate.json`` (AUC, accuracy, precision, sensitivity, specificity; malignant =
positive) are MONAI's, through ``common.classification`` on these rows, so that ``common.evaluation.summarise`` can
bootstrap them; a metric undefined for the rows (e.g. sensitivity without a malignant case) is None.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.classification import row_auc
from common.io import save_figure

logger = logging.getLogger(__name__)

Rows = Sequence[Mapping[str, Any]]


def roc_points(rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold (from (0, 0) to (1, 1)), for the plot."""
    y = np.array([int(r["label"]) for r in rows], dtype=int)
    s = np.array([float(r["p_malignant"]) for r in rows], dtype=float)
    thresholds = np.r_[np.inf, np.unique(s)[::-1]]
    tpr = np.array([((s >= t) & (y == 1)).sum() for t in thresholds]) / max((y == 1).sum(), 1)
    fpr = np.array([((s >= t) & (y == 0)).sum() for t in thresholds]) / max((y == 0).sum(), 1)
    return fpr, tpr


def case_rows(engine: Any, threshold: float = 0.5, temperature: float = 1.0) -> list[dict[str, Any]]:
    """One row per case of the evaluator's current batch: case, label, p_malignant (calibrated: softmax of the
    logits divided by ``temperature``), p_malignant_uncalibrated (temperature 1), predicted (p_malignant >=
    ``threshold``), correct. The evaluator's postprocessing must leave the two logits in ``pred``."""
    from common.calibration import positive_probability

    batch, output = engine.state.batch, engine.state.output
    preds = [o["pred"] for o in output] if isinstance(output, list) else list(output["pred"])
    if isinstance(batch, list):  # MONAI decollates the batch when the engine has postprocessing
        cases, labels = [b["case"] for b in batch], [b["label"] for b in batch]
    else:
        cases, labels = list(batch["case"]), list(batch["label"])
    rows = []
    for case, label, pred in zip(cases, labels, preds):
        logits = pred.detach().float().cpu().reshape(1, -1)
        p = float(positive_probability(logits, float(temperature))[0])
        predicted = int(p >= float(threshold))
        rows.append({"case": case, "label": int(label), "p_malignant": p,
                     "p_malignant_uncalibrated": float(positive_probability(logits, 1.0)[0]),
                     "predicted": predicted, "correct": int(predicted == int(label))})
    return rows


def read_case_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``metrics_per_case.csv``."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{**r, "label": int(r["label"]), "p_malignant": float(r["p_malignant"]),
                 "predicted": int(r["predicted"])} for r in csv.DictReader(f)]


def write_roc_curve(output_dir: str | os.PathLike, title: str = "Mass classification, test split") -> str:
    """Plot the ROC curve of ``<output_dir>/metrics_per_case.csv`` to ``<output_dir>/roc_curve.png`` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.distributed import is_rank0

    out = Path(str(output_dir)) / "roc_curve.png"
    if not is_rank0():
        return str(out)
    rows = read_case_rows(Path(str(output_dir)) / "metrics_per_case.csv")
    fpr, tpr = roc_points(rows)
    value = row_auc(rows, "p_malignant")
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(fpr, tpr, lw=2, label=f"CNN (AUC = {value:.3f})" if value is not None else "CNN (AUC undefined)")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    return save_figure(fig, out)


class RocCurveWriter:
    """Ignite handler: at the end of the evaluation epoch, plot ``metrics_per_case.csv`` as ``roc_curve.png``.

    Attach it after ``common.handlers.EvaluationWriter`` (which writes the CSV at the same event) and before
    ``common.tracking.MLflowRunRecorder`` (which uploads the PNG when ``overlay_dir`` is ``output_dir``).
    """

    def __init__(self, output_dir: str | os.PathLike, title: str = "Mass classification, test split") -> None:
        self.output_dir, self.title = str(output_dir), title

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: write_roc_curve(self.output_dir, self.title))


def lesion_masks(dataset_dir: str | os.PathLike, split: str = "test", margin: float = 0.25) -> dict[str, np.ndarray]:
    """Per case of ``split``, the ROI mask in the frame of the cropped image the network sees, ``(1, H, W)`` float32
    0/1, where it can be placed there: the full-image ROI mask (CBIS-DDSM's ``ROI mask file path``) cut to the
    box :class:`scripts.transforms.LoadMass` cuts (``crop_box`` with ``margin``), kept when that box has the size of
    the case's cropped image (always for ``crop_source: roi_mask`` and the synthetic data; TCIA's own crops of real
    CBIS-DDSM are cut otherwise, and those cases are left out). Unreadable rows are left out too."""
    from common.validation import Problems
    from scripts.data import load_split
    from scripts.dicom import read_dicom, read_header
    from scripts.transforms import crop_box

    problems = Problems(f"ROI masks of {dataset_dir}")
    with_masks = load_split(dataset_dir, split, "roi_mask", problems, check_files=False, strict_rows=False)
    crops = {i["case"]: i["image"] for i in load_split(dataset_dir, split, "cropped", Problems("crops"),
                                                         check_files=False, strict_rows=False)}
    out: dict[str, np.ndarray] = {}
    for item in with_masks:
        try:
            mask = read_dicom(item["roi"])
            mask = mask > mask.min()
            y0, y1, x0, x1 = crop_box(mask, margin)
            if item["case"] in crops:
                header = read_header(crops[item["case"]])
                if (int(header.Rows), int(header.Columns)) != (y1 - y0, x1 - x0):
                    continue  # the crop was cut elsewhere: the mask cannot be placed on it
            out[item["case"]] = mask[y0:y1, x0:x1][None].astype(np.float32)
        except (OSError, ValueError) as e:  # DicomError is a ValueError
            logger.warning("%s: ROI mask left out of cam_in_lesion (%s)", item["case"], e)
    return out


def cam_in_lesion(network: Any, preprocessing: Any, dataset_dir: str | os.PathLike, roi_size: int,
                  crop_source: str = "cropped", margin: float = 0.25, layer: str = "features.4.relu",
                  device: Any = "cpu", explain: Any = True, split: str = "test") -> dict[str, Any]:
    """Faithfulness of Grad-CAM where the lesion is known: ``cam_in_lesion``, the mean over cases of the share of the
    malignant-class Grad-CAM's mass inside the ROI mask (``common.explain.mass_inside``), beside
    ``lesion_area_fraction``, the mean share of the image the mask covers (what a uniform map scores), and
    ``cam_in_lesion_num_cases`` (cases whose mask could be placed on the network input, see :func:`lesion_masks`).
    The mask goes through the image's geometric steps (longest side resized to ``roi_size`` by area averaging,
    zero-padded to a square; a pixel counts as lesion from 0.5). All None when ``explain`` is false or no case has a
    usable mask. An ``extra`` entry of the evaluate ``EvaluationWriter`` (called once, at the end)."""
    from monai.transforms import Resize, ResizeWithPadOrCrop

    from common.explain import GradCam, area_fraction, enabled, mass_inside
    from scripts.data import datalist

    empty = {"cam_in_lesion": None, "lesion_area_fraction": None, "cam_in_lesion_num_cases": 0}
    if not enabled(explain):
        return empty
    masks = lesion_masks(dataset_dir, split, margin)
    size = int(roi_size)
    resize, pad = Resize(size, size_mode="longest", mode="area"), ResizeWithPadOrCrop((size, size), mode="constant")
    cam = GradCam(network, layer, class_idx=1)
    was_training = network.training
    network.eval()
    inside, areas = [], []
    for item in datalist(dataset_dir, split, crop_source, strict_rows=False):
        if item["case"] not in masks:
            continue
        x = torch.as_tensor(preprocessing(dict(item))["image"], dtype=torch.float32)[None].to(device)
        mask = np.asarray(pad(resize(masks[item["case"]])))[0] >= 0.5
        share = mass_inside(cam(x)[0], mask)
        if share is not None:
            inside.append(share)
            areas.append(area_fraction(mask))
    network.train(was_training)
    if not inside:
        return empty
    return {"cam_in_lesion": float(np.mean(inside)), "lesion_area_fraction": float(np.mean(areas)),
            "cam_in_lesion_num_cases": len(inside)}
