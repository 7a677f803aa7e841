"""``common.classification`` (MONAI's ROC AUC and confusion-matrix ratios) on hand-made tables.

Every expected value below is counted by hand from the table beside it; the old bundle-own implementations
(breast's pairwise AUC, pathology's and eye's scikit-learn AUC and hand-written ratios) gave the same numbers.
"""

from __future__ import annotations

import pytest
import torch

from common.classification import (
    confusion_counts,
    confusion_metric,
    confusion_metrics,
    roc_auc,
    row_auc,
    row_confusion_metric,
)

# label, score, predicted at 0.5:  TP = 3 (0.9, 0.8, 0.7), FN = 2 (0.2, 0.1), FP = 1 (0.6), TN = 4 (0.4 .. 0.1)
LABELS = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
SCORES = [0.9, 0.8, 0.7, 0.2, 0.1, 0.6, 0.4, 0.3, 0.2, 0.1]
PREDICTED = [int(s >= 0.5) for s in SCORES]


def test_confusion_counts_and_ratios_by_hand():
    assert confusion_counts(LABELS, PREDICTED) == {"tp": 3, "fp": 1, "tn": 4, "fn": 2}
    assert confusion_metrics(LABELS, PREDICTED) == pytest.approx({
        "accuracy": 7 / 10, "precision": 3 / 4, "sensitivity": 3 / 5, "specificity": 4 / 5,
        "f1 score": 2 * 3 / (2 * 3 + 1 + 2)})
    assert confusion_metric("sensitivity", torch.tensor(LABELS), torch.tensor(PREDICTED)) == pytest.approx(0.6)


def test_roc_auc_by_hand_with_ties():
    # positives {0.9, 0.8, 0.7, 0.2, 0.1} against negatives {0.6, 0.4, 0.3, 0.2, 0.1}: 0.9, 0.8, 0.7 beat all 5 (15);
    # 0.2 beats 0.1 and ties 0.2 (1.5); 0.1 ties 0.1 (0.5): 17 of 25 pairs
    assert roc_auc(LABELS, SCORES) == pytest.approx(17 / 25)
    # positives {0.9, 0.4}, negatives {0.5, 0.1, 0.4}: 3 + (1 + 0.5) wins of 6 pairs
    assert roc_auc([1, 1, 0, 0, 0], [0.9, 0.4, 0.5, 0.1, 0.4]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.9, 0.1]) == 0.0 and roc_auc([[0, 1]], [[0.1, 0.9]]) == 1.0  # any shape, flattened


def test_undefined_is_none_never_nan():
    assert roc_auc([0, 0], [0.2, 0.7]) is None and roc_auc([], []) is None
    assert confusion_metric("sensitivity", [0, 0], [1, 0]) is None  # no positive label
    assert confusion_metric("precision", [1, 0], [0, 0]) is None  # no positive prediction
    assert confusion_metrics([], []) == dict.fromkeys(["accuracy", "precision", "sensitivity", "specificity",
                                                       "f1 score"])


def test_rows_read_the_named_columns():
    rows = [{"label": y, "p": s, "hat": p} for y, s, p in zip(LABELS, SCORES, PREDICTED)]
    assert row_auc(rows, "p") == pytest.approx(17 / 25)
    assert row_confusion_metric(rows, "specificity", "hat") == pytest.approx(4 / 5)
    csv_rows = [{"label": str(r["label"]), "p": str(r["p"]), "hat": str(r["hat"])} for r in rows]  # as read back
    assert row_confusion_metric(csv_rows, "accuracy", "hat") == pytest.approx(7 / 10)


@pytest.mark.parametrize("labels, other, match", [
    ([0, 1, 2], [0.1, 0.2, 0.3], "labels must be 0 or 1"),
    ([0, 1], [0.1], "differ in size"),
])
def test_bad_input_is_refused(labels, other, match):
    with pytest.raises(ValueError, match=match):
        roc_auc(labels, other)
    with pytest.raises(ValueError, match="must be 0 or 1|differ in size"):
        confusion_counts(labels, [int(v > 0.15) for v in other])
