"""Vessel segmentation metrics computed inside the field of view (FOV) only, as in the DRIVE protocol.

Every pixel outside the FOV mask is ignored: it counts neither as a true negative (which would inflate accuracy and
specificity) nor in the AUC. Per image: Dice (= F1), sensitivity, specificity, accuracy (at the probability
``threshold``) and the ROC AUC of the probabilities; a value undefined for an image (e.g. sensitivity without vessel
pixels, AUC with one class only) is ``None``. The ratios and the AUC are MONAI's (``common.classification``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from common.classification import confusion_metrics, roc_auc

CASE_METRICS = ("dice", "auc", "accuracy", "sensitivity", "specificity")


def _flat(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).reshape(-1)


def fov_metrics(prob: Any, label: Any, fov: Any, threshold: float = 0.5) -> dict[str, float | None]:
    """Dice, AUC, accuracy, sensitivity and specificity of one image inside its FOV.

    Args:
        prob: vessel probabilities (any shape).
        label: ground-truth vessels (same number of elements; > 0 is a vessel).
        fov: FOV mask (same number of elements; > 0 is inside).
        threshold: a pixel is predicted vessel when ``prob >= threshold``.

    Returns:
        ``{"dice", "auc", "accuracy", "sensitivity", "specificity"}`` (values or None where undefined).

    Raises:
        ValueError: the three inputs differ in size, or the FOV is empty.
    """
    p, g, f = _flat(prob).astype(np.float64), _flat(label) > 0, _flat(fov) > 0
    if not p.size == g.size == f.size:
        raise ValueError(f"prob, label and fov differ in size: {p.size}, {g.size}, {f.size}.")
    if not f.any():
        raise ValueError("the FOV mask is empty: no pixel to evaluate.")
    p, g = p[f], g[f]
    pred = p >= threshold
    ratios = confusion_metrics(g, pred, ("f1 score", "accuracy", "sensitivity", "specificity"))
    return {"dice": ratios["f1 score"], "auc": roc_auc(g, p), "accuracy": ratios["accuracy"],
            "sensitivity": ratios["sensitivity"], "specificity": ratios["specificity"]}


def eye_case_rows(engine: Any, threshold: float = 0.5) -> list[dict[str, Any]]:
    """Per-image metric rows of one evaluator iteration, for ``common.handlers.EvaluationWriter``.

    Reads the decollated ``engine.state.output`` (``prob``: sigmoid probabilities, ``label``) and
    ``engine.state.batch`` (``fov``, ``case``).
    """
    batch: Sequence[Mapping[str, Any]] = engine.state.batch
    output: Sequence[Mapping[str, Any]] = engine.state.output
    rows = []
    for b, o in zip(batch, output):
        row: dict[str, Any] = {"case": str(b.get("case", len(rows)))}
        row.update(fov_metrics(o["prob"], o["label"], b["fov"], threshold))
        rows.append(row)
    return rows


def uncertainty_arrays(batch: Mapping[str, Any], output: Mapping[str, Any]) -> dict[str, Any]:
    """``item_arrays`` of ``common.uncertainty.UncertaintyCaseRows``: one image's entropy (HW, nats), wrong pixels
    (mask differs from the vessel label), vessels in truth or prediction, predicted vessels, and the FOV (``valid``:
    metrics count inside it only)."""
    pred = np.asarray(torch.as_tensor(output["pred"]).detach().cpu().numpy()[0]) > 0
    label = np.asarray(torch.as_tensor(output["label"]).detach().cpu().numpy()[0]) > 0.5
    fov = np.squeeze(np.asarray(torch.as_tensor(batch["fov"]).detach().cpu().numpy())) > 0
    return {"case": str(batch.get("case")), "uncertainty": torch.as_tensor(output["uncertainty"])[0].cpu().numpy(),
            "wrong": pred != label, "foreground": pred | label, "predicted": pred & fov, "valid": fov}
