"""Binary classification metrics on MONAI: ROC AUC (``monai.metrics.compute_roc_auc``) and the confusion-matrix
ratios (``monai.metrics.get_confusion_matrix`` + ``compute_confusion_matrix_metric``, what ``ConfusionMatrixMetric``
computes), for the classifier bundles (breast, pathology) and eye's per-pixel scores.

Positive is label 1. A metric undefined for the data (AUC with one class present, sensitivity without a positive
case, precision without a positive prediction, anything of zero cases) is ``None``, never NaN, as ``metrics.json``
wants (DESIGN.md). ``row_auc`` / ``row_confusion_metric`` read per-case rows, for the ``dataset_metrics`` of
``common.handlers.EvaluationWriter``::

    "auc": {"_target_": "common.classification.row_auc", "_mode_": "callable", "prob": "p_malignant"},
    "sensitivity": {"_target_": "common.classification.row_confusion_metric", "_mode_": "callable",
                    "metric": "sensitivity", "pred": "predicted"}
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_confusion_matrix_metric, compute_roc_auc, get_confusion_matrix

Rows = Sequence[Mapping[str, Any]]
CONFUSION_METRICS = ("accuracy", "precision", "sensitivity", "specificity", "f1 score")


def _vector(values: Any, name: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return torch.as_tensor(np.asarray(values, dtype=np.float64).reshape(-1))


def _binary_labels(labels: Any) -> torch.Tensor:
    y = _vector(labels, "labels")
    if y.numel() and not bool(((y == 0) | (y == 1)).all()):
        raise ValueError(f"labels must be 0 or 1, got the values {sorted(set(y.tolist()))[:5]}.")
    return y


def roc_auc(labels: Any, scores: Any) -> float | None:
    """Area under the ROC curve of ``scores`` (any shape, flattened) for the 0/1 ``labels`` (same number of elements),
    ties counting one half (MONAI's ``compute_roc_auc``, the Mann-Whitney statistic).

    Returns:
        The AUC in [0, 1], or None when fewer than two classes are present.

    Raises:
        ValueError: the two differ in size, or a label is not 0 or 1.
    """
    y, s = _binary_labels(labels), _vector(scores, "scores")
    if y.numel() != s.numel():
        raise ValueError(f"labels and scores differ in size: {y.numel()} and {s.numel()}.")
    if y.numel() == 0 or len(torch.unique(y)) < 2:
        return None
    return float(compute_roc_auc(s, y))


def confusion_counts(labels: Any, predicted: Any) -> dict[str, int]:
    """True/false positives/negatives of the 0/1 ``predicted`` against the 0/1 ``labels`` (MONAI's
    ``get_confusion_matrix``).

    Raises:
        ValueError: the two differ in size, or a value is not 0 or 1.
    """
    y, p = _binary_labels(labels), _binary_labels(predicted)
    if y.numel() != p.numel():
        raise ValueError(f"labels and predictions differ in size: {y.numel()} and {p.numel()}.")
    if y.numel() == 0:
        return {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    tp, fp, tn, fn = (int(v) for v in get_confusion_matrix(p.reshape(1, 1, -1), y.reshape(1, 1, -1))[0, 0])
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def confusion_metrics(labels: Any, predicted: Any, metrics: Sequence[str] = CONFUSION_METRICS
                      ) -> dict[str, float | None]:
    """Each of ``metrics`` (``accuracy``, ``precision``, ``sensitivity``, ``specificity``, ``f1 score`` = Dice, or any
    other name of MONAI's ``compute_confusion_matrix_metric``) of the 0/1 ``predicted`` against the 0/1 ``labels``,
    from one confusion matrix.

    Returns:
        ``{metric: value}``, a value None where its denominator is zero (e.g. sensitivity without a positive label).
    """
    counts = confusion_counts(labels, predicted)
    if not any(counts.values()):
        return dict.fromkeys(metrics)
    matrix = torch.tensor([[counts["tp"], counts["fp"], counts["tn"], counts["fn"]]], dtype=torch.float64)
    out: dict[str, float | None] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns before returning NaN for a zero denominator
        for metric in metrics:
            value = float(compute_confusion_matrix_metric(metric, matrix).reshape(-1)[0])
            out[metric] = None if math.isnan(value) else value
    return out


def confusion_metric(metric: str, labels: Any, predicted: Any) -> float | None:
    """One of :func:`confusion_metrics`."""
    return confusion_metrics(labels, predicted, (metric,))[metric]


def row_auc(rows: Rows, prob: str, label: str = "label") -> float | None:
    """:func:`roc_auc` of the ``prob`` column of per-case rows against their ``label`` column."""
    return roc_auc([int(r[label]) for r in rows], [float(r[prob]) for r in rows])


def row_confusion_metric(rows: Rows, metric: str, pred: str, label: str = "label") -> float | None:
    """:func:`confusion_metric` of the 0/1 ``pred`` column of per-case rows against their ``label`` column."""
    return confusion_metric(metric, [int(r[label]) for r in rows], [int(r[pred]) for r in rows])


def row_confusion_metric_at(rows: Rows, metric: str, prob: str, threshold: float = 0.5, label: str = "label"
                            ) -> float | None:
    """:func:`confusion_metric` with every row labelled positive where its ``prob`` column is >= ``threshold``:
    the metric at another operating point than the recorded one (metrics.json ``<metric>_at_0_5`` beside
    ``<metric>`` at the threshold fitted on the validation split). With softmax over two logits (or a sigmoid of
    one), p >= 0.5 exactly when the positive logit wins, before and after temperature scaling."""
    return confusion_metric(metric, [int(r[label]) for r in rows],
                            [int(float(r[prob]) >= float(threshold)) for r in rows])
