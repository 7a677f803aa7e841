"""Per-patient evaluation rows (Dice and HD95 per structure at ED and ES, clinical indices) and dataset metrics.

Dice and HD95 are MONAI's (``compute_dice``, ``compute_hausdorff_distance`` with the voxel spacing, in mm), computed
in the input's own voxel grid. Clinical agreement follows the ACDC challenge (Bernard et al. 2018): LV ejection
fraction mean absolute error ``ef_mae`` (percentage points), Pearson correlation ``ef_corr`` and bias ``ef_bias``
(prediction - ground truth); the same for RV EF and myocardial mass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from scripts.clinical import clinical_indices

STRUCTURES = ("rv", "myo", "lv")
CASE_METRICS = ["mean_dice"] + [f"{m}_{s}_{p}" for m in ("dice", "hd95") for p in ("ed", "es") for s in STRUCTURES]


def _onehot(label: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(np.asarray(label), dtype=torch.long), 4).movedim(-1, 0)[None]


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(float(value)) else None


def phase_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> dict[str, float | None]:
    """Dice and HD95 (mm) of RV, MYO, LV between two label maps of one phase."""
    p, g = _onehot(pred), _onehot(gt)
    dice = compute_dice(p, g, include_background=False, ignore_empty=True)[0]
    if bool(p[:, 1:].flatten(2).any(-1).all()) and bool(g[:, 1:].flatten(2).any(-1).all()):
        hd = compute_hausdorff_distance(p, g, include_background=False, percentile=95,
                                        spacing=[float(s) for s in spacing])[0]
    else:  # MONAI warns per empty structure; compute each present one alone
        hd = torch.full((3,), float("nan"))
        for c in range(1, 4):
            if p[0, c].any() and g[0, c].any():
                hd[c - 1] = compute_hausdorff_distance(p[:, [0, c]], g[:, [0, c]], percentile=95,
                                                       spacing=[float(s) for s in spacing])[0, 0]
    out: dict[str, float | None] = {}
    for i, s in enumerate(STRUCTURES):
        out[f"dice_{s}"], out[f"hd95_{s}"] = _finite(dice[i]), _finite(hd[i])
    return out


def patient_row(patient: str, preds: Mapping[str, np.ndarray], gts: Mapping[str, np.ndarray],
                spacing: Sequence[float]) -> dict[str, Any]:
    """One metrics_per_case.csv row from the predicted and true ED/ES label maps of a patient."""
    row: dict[str, Any] = {"case": patient}
    for phase in ("ED", "ES"):
        for name, value in phase_metrics(preds[phase], gts[phase], spacing).items():
            metric, structure = name.split("_")
            row[f"{metric}_{structure}_{phase.lower()}"] = value
    dices = [row[f"dice_{s}_{p}"] for s in STRUCTURES for p in ("ed", "es")]
    row["mean_dice"] = float(np.mean([d if d is not None else 0.0 for d in dices]))
    pred_ci = clinical_indices(preds["ED"], preds["ES"], spacing, patient)
    gt_ci = clinical_indices(gts["ED"], gts["ES"], spacing, patient)
    for key in ("lv_ef_pct", "rv_ef_pct", "myo_mass_g", "lv_edv_ml", "lv_esv_ml"):
        row[f"{key}_pred"], row[f"{key}_gt"] = pred_ci[key], gt_ci[key]
    return row


def case_rows(engine: Any) -> list[dict[str, Any]]:
    """``common.handlers.EvaluationWriter`` callback: one row per patient once both its phases were evaluated.

    Reads ``pred`` and ``label`` (one-hot, in the input's voxel grid) from ``engine.state.output`` and ``patient`` /
    ``phase`` from ``engine.state.batch``; phases of a patient may arrive in one batch or in consecutive ones.
    """
    pending = getattr(engine.state, "cardiac_pending", None)
    if pending is None or engine.state.iteration == 1:
        pending = engine.state.cardiac_pending = {}
    rows = []
    for batch, output in zip(engine.state.batch, engine.state.output):
        patient, phase = str(batch["patient"]), str(batch["phase"])
        gt = output["label"]
        spacing = [float(s) for s in gt.pixdim[:3]] if hasattr(gt, "pixdim") else [1.0, 1.0, 1.0]
        entry = pending.setdefault(patient, {"pred": {}, "gt": {}, "spacing": spacing})
        entry["pred"][phase] = output["pred"].argmax(0).cpu().numpy()
        entry["gt"][phase] = gt.argmax(0).cpu().numpy()
        if len(entry["pred"]) == 2:
            rows.append(patient_row(patient, entry["pred"], entry["gt"], entry["spacing"]))
            del pending[patient]
    return rows


def _pairs(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    kept = [(r[f"{key}_pred"], r[f"{key}_gt"]) for r in rows
            if r.get(f"{key}_pred") is not None and r.get(f"{key}_gt") is not None]
    arr = np.array(kept, dtype=float).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _mae(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    pred, gt = _pairs(rows, key)
    return float(np.mean(np.abs(pred - gt))) if pred.size else None


def _bias(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    pred, gt = _pairs(rows, key)
    return float(np.mean(pred - gt)) if pred.size else None


def _corr(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    pred, gt = _pairs(rows, key)
    if pred.size < 2 or np.std(pred) == 0 or np.std(gt) == 0:
        return None
    return float(np.corrcoef(pred, gt)[0, 1])


def ef_mae(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean absolute LV EF error, percentage points."""
    return _mae(rows, "lv_ef_pct")


def ef_corr(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Pearson correlation of predicted and true LV EF."""
    return _corr(rows, "lv_ef_pct")


def ef_bias(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean (predicted - true) LV EF, percentage points."""
    return _bias(rows, "lv_ef_pct")


def rvef_mae(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean absolute RV EF error, percentage points."""
    return _mae(rows, "rv_ef_pct")


def rvef_corr(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Pearson correlation of predicted and true RV EF."""
    return _corr(rows, "rv_ef_pct")


def mass_corr(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Pearson correlation of predicted and true myocardial mass."""
    return _corr(rows, "myo_mass_g")


def mass_bias(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean (predicted - true) myocardial mass, g."""
    return _bias(rows, "myo_mass_g")


class CaseRows:
    """``case_rows`` of ``common.handlers.EvaluationWriter`` (see :func:`case_rows`) that also writes an overlay PNG
    (image, ground truth, prediction on the mid-ventricular ED slice) for the first ``max_overlays`` patients."""

    def __init__(self, overlay_dir: str | None = None, max_overlays: int = 3) -> None:
        self.overlay_dir = overlay_dir
        self.max_overlays = int(max_overlays)
        self.written = 0

    def __call__(self, engine: Any) -> list[dict[str, Any]]:
        if self.overlay_dir is not None and self.written < self.max_overlays:
            for batch, output in zip(engine.state.batch, engine.state.output):
                if str(batch["phase"]) == "ED" and self.written < self.max_overlays:
                    self._overlay(str(batch["patient"]), batch, output)
        return case_rows(engine)

    def _overlay(self, patient: str, batch: Any, output: Any) -> None:
        import nibabel as nib

        from common.overlays import middle_slice, save_overlay_png

        pred = output["pred"].argmax(0).cpu().numpy()
        truth = output["label"].argmax(0).cpu().numpy()
        source = getattr(batch["image"], "meta", {}).get("filename_or_obj")
        if not source:
            return
        image = np.asarray(nib.load(str(source)).dataobj, dtype=np.float32)
        if image.shape != truth.shape:
            return
        z = middle_slice(truth, axis=-1, mask=truth > 0)
        save_overlay_png(image[..., z].T, truth[..., z].T, pred[..., z].T,
                         f"{self.overlay_dir}/{patient}_ED_slice{z}.png", title=f"{patient} ED, slice {z}",
                         class_names={1: "RV", 2: "MYO", 3: "LV"})
        self.written += 1


def uncertainty_arrays(batch: Mapping[str, Any], output: Mapping[str, Any]) -> dict[str, Any]:
    """``item_arrays`` of ``common.uncertainty.UncertaintyCaseRows``: one frame's entropy, wrong voxels (predicted
    class differs from the true one), truth-or-prediction heart, predicted heart, and its patient and phase."""
    pred, gt = output["pred"].argmax(0).cpu().numpy(), output["label"].argmax(0).cpu().numpy()
    return {"case": str(batch["patient"]), "phase": str(batch["phase"]),
            "uncertainty": output["uncertainty"][0].cpu().numpy(), "wrong": pred != gt,
            "foreground": (pred > 0) | (gt > 0), "predicted": pred > 0}
