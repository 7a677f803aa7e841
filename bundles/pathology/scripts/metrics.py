"""Per-patch rows and patch-level metrics (AUC, accuracy, sensitivity, specificity) for ``metrics.json``.

Rows carry the calibrated tumour probability ``prob_tumour`` (sigmoid of the logit divided by the temperature
recorded in ``model.json``), ``prob_tumour_uncalibrated`` and ``pred`` (1 when ``prob_tumour >= threshold``, the
recorded operating threshold); accuracy, sensitivity and specificity count ``pred`` (rows without it: p >= 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

THRESHOLD = 0.5


def case_rows(engine: Any, threshold: float = THRESHOLD, temperature: float = 1.0) -> list[dict[str, Any]]:
    """One row per patch of the current evaluator iteration: case id, label, calibrated tumour probability
    (``sigmoid(logit / temperature)``), the uncalibrated one and the label predicted at ``threshold``. The
    evaluator's postprocessing must leave the logit in ``pred`` (no activation)."""
    from common.calibration import positive_probability

    batch, output = engine.state.batch, engine.state.output
    rows = []
    for item, out in zip(batch, output):
        logit = [_scalar(out["pred"])]
        prob = float(positive_probability(logit, float(temperature))[0])
        label = int(round(_scalar(out["label"])))
        rows.append({"case": str(item["case"]), "label": label, "prob_tumour": prob,
                     "prob_tumour_uncalibrated": float(positive_probability(logit, 1.0)[0]),
                     "pred": int(prob >= float(threshold))})
    return rows


def _scalar(value: Any) -> float:
    """The first element of a tensor or array as a float."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return float(np.asarray(value).ravel()[0])


def _arrays(rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    label = np.array([int(r["label"]) for r in rows])
    prob = np.array([float(r["prob_tumour"]) for r in rows])
    pred = np.array([int(r["pred"]) if "pred" in r else int(float(r["prob_tumour"]) >= THRESHOLD) for r in rows])
    return label, prob, pred


def auc(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Area under the ROC curve of the tumour probability; None when only one class is present."""
    label, prob, _ = _arrays(rows)
    if len(np.unique(label)) < 2:
        return None
    return float(roc_auc_score(label, prob))


def accuracy(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Fraction of patches whose predicted label (``pred``) equals the label."""
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


def at_threshold(rows: Sequence[Mapping[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """The rows relabelled at another operating point: ``pred`` = 1 where ``prob_tumour >= threshold``."""
    return [{**r, "pred": int(float(r["prob_tumour"]) >= float(threshold))} for r in rows]


def accuracy_at(rows: Sequence[Mapping[str, Any]], threshold: float = THRESHOLD) -> float | None:
    """:func:`accuracy` at ``threshold`` instead of the recorded one (metrics.json ``accuracy_at_0_5``). With one
    logit, sigmoid(z / T) >= 0.5 exactly when z >= 0: 0.5 means the same before and after temperature scaling."""
    return accuracy(at_threshold(rows, threshold))


def sensitivity_at(rows: Sequence[Mapping[str, Any]], threshold: float = THRESHOLD) -> float | None:
    """:func:`sensitivity` at ``threshold`` (``sensitivity_at_0_5``); None without tumour patches."""
    return sensitivity(at_threshold(rows, threshold))


def specificity_at(rows: Sequence[Mapping[str, Any]], threshold: float = THRESHOLD) -> float | None:
    """:func:`specificity` at ``threshold`` (``specificity_at_0_5``); None without normal patches."""
    return specificity(at_threshold(rows, threshold))
