"""Per-patch rows and patch-level metrics (AUC, accuracy, sensitivity, specificity) for ``metrics.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

THRESHOLD = 0.5


def case_rows(engine: Any) -> list[dict[str, Any]]:
    """One row per patch of the current evaluator iteration: case id, label, tumour probability, predicted label."""
    batch, output = engine.state.batch, engine.state.output
    rows = []
    for item, out in zip(batch, output):
        prob = _scalar(out["pred"])
        label = int(round(_scalar(out["label"])))
        rows.append({"case": str(item["case"]), "label": label, "prob_tumour": prob, "pred": int(prob >= THRESHOLD)})
    return rows


def _scalar(value: Any) -> float:
    """The first element of a tensor or array as a float."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return float(np.asarray(value).ravel()[0])


def _arrays(rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    label = np.array([int(r["label"]) for r in rows])
    prob = np.array([float(r["prob_tumour"]) for r in rows])
    return label, prob, (prob >= THRESHOLD).astype(int)


def auc(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Area under the ROC curve of the tumour probability; None when only one class is present."""
    label, prob, _ = _arrays(rows)
    if len(np.unique(label)) < 2:
        return None
    return float(roc_auc_score(label, prob))


def accuracy(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Fraction of patches whose thresholded prediction (p >= 0.5) equals the label."""
    label, _, pred = _arrays(rows)
    return float((label == pred).mean()) if len(label) else None


def sensitivity(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """TP / (TP + FN); None without tumour patches."""
    label, _, pred = _arrays(rows)
    positives = label == 1
    return float(pred[positives].mean()) if positives.any() else None


def specificity(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """TN / (TN + FP); None without normal patches."""
    label, _, pred = _arrays(rows)
    negatives = label == 0
    return float(1 - pred[negatives].mean()) if negatives.any() else None
