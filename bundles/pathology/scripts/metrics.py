"""Per-patch rows for ``metrics.json``.

Rows carry the calibrated tumour probability ``prob_tumour`` (sigmoid of the logit divided by the temperature
recorded in ``model.json``), ``prob_tumour_uncalibrated`` and ``pred`` (1 when ``prob_tumour >= threshold``, the
recorded operating threshold). The patch-level metrics of ``evaluate.json`` are MONAI's, through
``common.classification``: ``auc`` of ``prob_tumour``; accuracy, sensitivity and specificity of ``pred``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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

