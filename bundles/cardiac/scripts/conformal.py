"""Conformal 95 % intervals for the clinical indices (LV/RV EF, LV EDV/ESV), calibrated on the validation split.

Split conformal prediction (Angelopoulos & Bates 2021, section 2.3; :mod:`common.uncertainty`) with the spread of the
index over the test-time-augmentation samples as the normaliser: score = |true - predicted| / max(spread, floor).
Sample ``s`` of the ED and of the ES frame use the same augmentation, so each sample gives one EF; the volumes'
spread is their relative spread over the samples (voxel counts in the network grid) times the predicted volume.
The quantile ``q`` of each index is recorded in ``models/model.json`` (``conformal``) and an interval is
``predicted -/+ q * max(spread, floor)``. The guarantee is marginal: over patients exchangeable with the calibration
patients, at least 95 % of intervals hold the truth; nothing is promised for one patient or another population.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from common.checkpoint import BestModelFitter, record_settings
from common.uncertainty import (
    conformal_interval,
    conformal_quantile,
    min_calibration_cases,
    normalised_scores,
    sample_spread,
)
from scripts.clinical import LV, RV, ejection_fraction

logger = logging.getLogger(__name__)

#: The indices given an interval, and the floor (same unit) of their TTA spread.
QUANTITIES = {"lv_ef_pct": 1.0, "rv_ef_pct": 1.0, "lv_edv_ml": 1.0, "lv_esv_ml": 1.0}
INTERVAL_COLUMNS = [f"{k}_{end}" for k in QUANTITIES for end in ("low", "high")]


def tta_spreads(counts_ed: Any, counts_es: Any, predicted: Mapping[str, Any]) -> dict[str, float | None]:
    """The TTA spread of each index of :data:`QUANTITIES` from per-sample class voxel counts.

    Args:
        counts_ed, counts_es: ``(S, C)`` voxels per class (0 bg, 1 RV, 2 MYO, 3 LV) in each TTA sample of the ED
            and ES frames (``common.uncertainty.TTAInferer.sample_counts`` of a batch of one).
        predicted: the clinical.csv row of the mean prediction (volumes in ml).

    Returns:
        EF spreads in percentage points (standard deviation of the per-sample EFs), volume spreads in ml (the
        counts' standard deviation over their mean, times the predicted volume); None where undefined.
    """
    ed, es = np.asarray(counts_ed, dtype=np.float64), np.asarray(counts_es, dtype=np.float64)
    out: dict[str, float | None] = {}
    for name, c in (("lv", LV), ("rv", RV)):
        out[f"{name}_ef_pct"] = sample_spread([ejection_fraction(a, b) for a, b in zip(ed[:, c], es[:, c])])
    for key, counts in (("lv_edv_ml", ed[:, LV]), ("lv_esv_ml", es[:, LV])):
        mean = float(np.mean(counts))
        value = predicted.get(key)
        out[key] = None if mean <= 0 or value is None else float(np.std(counts)) / mean * float(value)
    return out


def interval_columns(predicted: Mapping[str, Any], spreads: Mapping[str, float | None],
                     conformal: Mapping[str, Any]) -> dict[str, float | None]:
    """``<index>_low``/``<index>_high`` for each index of :data:`QUANTITIES` from the recorded ``conformal``
    settings (``q`` and ``sigma_floor`` per index); None where the prediction is undefined (e.g. EF without LV)."""
    out: dict[str, float | None] = {}
    for key in QUANTITIES:
        value, q = predicted.get(key), conformal["q"].get(key)
        if value is None or q is None:
            out[f"{key}_low"] = out[f"{key}_high"] = None
            continue
        spread = spreads.get(key)
        floor = float(conformal.get("sigma_floor", QUANTITIES).get(key, QUANTITIES[key]))
        out[f"{key}_low"], out[f"{key}_high"] = conformal_interval(float(value), spread or 0.0, float(q), floor)
    return out


def calibrate(records: list[dict[str, Any]], alpha: float = 0.05) -> dict[str, Any]:
    """The conformal settings from per-patient calibration records ``{"pred": row, "true": row, "spread": dict}``.

    Returns ``{"alpha", "n", "n_required", "q": {index: quantile or None (too few patients: unbounded)},
    "sigma_floor", "method"}``; ``n`` counts the patients whose every index was defined."""
    q: dict[str, float | None] = {}
    n_used = []
    for key, floor in QUANTITIES.items():
        used = [r for r in records if r["pred"].get(key) is not None and r["true"].get(key) is not None]
        n_used.append(len(used))
        if not used:
            q[key] = None
            continue
        scores = normalised_scores([r["pred"][key] for r in used], [r["true"][key] for r in used],
                                   [r["spread"].get(key) or 0.0 for r in used], floor)
        value = conformal_quantile(scores, alpha)
        q[key] = value if math.isfinite(value) else None
    return {"alpha": float(alpha), "n": min(n_used) if n_used else 0, "n_required": min_calibration_cases(alpha),
            "q": q, "sigma_floor": dict(QUANTITIES),
            "method": "split conformal, |true - predicted| / max(TTA spread, sigma_floor) (Angelopoulos & Bates 2021)"}


class ConformalCalibrator(BestModelFitter):
    """Ignite handler: when training completes, predict every validation patient with test-time augmentation using
    the best model, and record the conformal settings (:func:`calibrate`, with ``tta_samples``) under
    ``conformal`` in ``models/model.json``. Rank 0 only.

    Args:
        ckpt_path: the best ``model.pt`` (its ``model.json`` is updated).
        network: the training network (deep-copied; the best weights are loaded into the copy).
        dataset: the validation items after ``validate#preprocessing`` (``image``, ``label``, ``patient``,
            ``phase``).
        inferer: a ``common.uncertainty.TTAInferer`` (enabled) around the validation inferer.
        postprocessing: the validation postprocessing (mean probability back to the input grid, one-hot).
        alpha: 1 - the coverage (0.05: 95 % intervals).
    """

    def __init__(self, ckpt_path: str, network: torch.nn.Module, dataset: Any, inferer: Any, postprocessing: Any,
                 device: Any = "cpu", alpha: float = 0.05) -> None:
        super().__init__(ckpt_path, network, device)
        self.dataset, self.inferer, self.postprocessing, self.alpha = dataset, inferer, postprocessing, float(alpha)

    def fit(self, network: torch.nn.Module) -> dict[str, Any]:
        from scripts.clinical import clinical_indices

        patients: dict[str, dict[str, Any]] = {}
        with torch.no_grad():
            for index in range(len(self.dataset)):
                data = dict(self.dataset[index])
                data["pred"] = self.inferer(data["image"][None].to(self.device), network)[0].cpu()
                counts = self.inferer.sample_counts[:, 0].numpy()
                data = self.postprocessing(data)
                gt = data["label"]
                spacing = [float(s) for s in gt.pixdim[:3]] if hasattr(gt, "pixdim") else [1.0, 1.0, 1.0]
                entry = patients.setdefault(str(data["patient"]), {"spacing": spacing})
                entry[str(data["phase"])] = (data["pred"].argmax(0).numpy(), gt.argmax(0).numpy(), counts)
        records = []
        for patient, entry in patients.items():
            if "ED" not in entry or "ES" not in entry:
                continue
            pred = clinical_indices(entry["ED"][0], entry["ES"][0], entry["spacing"], patient)
            true = clinical_indices(entry["ED"][1], entry["ES"][1], entry["spacing"], patient)
            records.append({"pred": pred, "true": true, "spread": tta_spreads(entry["ED"][2], entry["ES"][2], pred)})
        result = calibrate(records, self.alpha)
        result["tta_samples"] = int(self.inferer.tta_samples)
        path = record_settings(self.ckpt_path, {"conformal": result})
        unbounded = [k for k, v in result["q"].items() if v is None]
        logger.info("conformal calibration on %d validation patients (alpha %.2f, %d TTA samples): q = %s%s; "
                    "recorded in %s", result["n"], self.alpha, result["tta_samples"], result["q"],
                    f" ({', '.join(unbounded)} unbounded: at least {result['n_required']} patients needed)"
                    if unbounded else "", path)
        return result


class IntervalColumns:
    """``case_columns`` of ``common.uncertainty.UncertaintyCaseRows`` for cardiac evaluate: the conformal intervals of
    a patient (from its ED/ES items' TTA ``sample_counts`` and its row's ``<index>_pred``), whether the true LV EF
    (``lv_ef_pct_gt``) lies inside (``ef_in_interval``: 1/0) and the LV EF interval's width in percentage points
    (``ef_interval_width_pp``).

    Raises:
        common.checkpoint.CheckpointError: no ``conformal`` settings (never an uncalibrated interval).
    """

    def __init__(self, conformal: Mapping[str, Any] | None) -> None:
        self.conformal = conformal

    def __call__(self, items: list[dict[str, Any]], row: Mapping[str, Any]) -> dict[str, Any]:
        if self.conformal is None:
            from common.checkpoint import CheckpointError

            raise CheckpointError("evaluate --uncertainty true needs the conformal settings of model.json")
        by_phase = {str(i.get("phase")): i.get("sample_counts") for i in items}
        predicted = {k: row.get(f"{k}_pred") for k in QUANTITIES}
        if by_phase.get("ED") is None or by_phase.get("ES") is None:
            spreads: dict[str, float | None] = {}
        else:
            spreads = tta_spreads(by_phase["ED"], by_phase["ES"], predicted)
        out: dict[str, Any] = interval_columns(predicted, spreads, self.conformal)
        low, high, truth = out.get("lv_ef_pct_low"), out.get("lv_ef_pct_high"), row.get("lv_ef_pct_gt")
        defined = low is not None and high is not None and truth is not None
        out["ef_in_interval"] = (1 if low <= float(truth) <= high else 0) if defined else None
        out["ef_interval_width_pp"] = high - low if low is not None and high is not None else None
        return out


def ef_interval_coverage(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Share of patients whose true LV EF lies inside their conformal interval (``ef_in_interval``)."""
    hits = [float(r["ef_in_interval"]) for r in rows if r.get("ef_in_interval") not in (None, "")]
    return float(np.mean(hits)) if hits else None


def ef_interval_width(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Median width of the LV EF intervals, percentage points."""
    widths = [float(r["ef_interval_width_pp"]) for r in rows if r.get("ef_interval_width_pp") not in (None, "")]
    return float(np.median(widths)) if widths else None
