"""Evaluation outputs every bundle writes: ``metrics.json`` and ``metrics_per_case.csv`` with bootstrap CIs.

Point estimates come with a 95 % percentile bootstrap interval over cases (Efron & Tibshirani, "An Introduction
to the Bootstrap", 1993): the surveys (Litjens et al. 2017) name missing confidence intervals as an obstacle to
clinical use. Two kinds of metric are summarised:

* per-case metrics (a column of the per-case table, e.g. a case's Dice): the point estimate is the mean over the
  cases where the value is defined; undefined values (``None``/NaN, e.g. HD95 with an empty prediction) are
  counted in ``<name>_num_undefined`` and left out of the mean;
* dataset metrics (a function of all rows, e.g. AUC over patches): recomputed on every resample of the rows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.io import write_csv, write_json

DatasetMetric = Callable[[Sequence[Mapping[str, Any]]], "float | None"]


def _is_defined(value: Any) -> bool:
    return value is not None and not (isinstance(value, (float, np.floating)) and not math.isfinite(value))


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float | None],
    n: int,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` over ``n`` cases.

    Args:
        statistic: maps an array of case indices (drawn with replacement) to a value, or None where undefined.
        n: number of cases.
        n_resamples: resamples drawn (at least 1000 is the house rule).
        seed: the resampling seed, so the interval is reproducible.
        confidence: the interval's coverage.

    Returns:
        ``(low, high)``, or None when no resample gives a defined value.

    Raises:
        ValueError: ``n`` < 1, ``n_resamples`` < 1 or ``confidence`` outside (0, 1).
    """
    if n < 1:
        raise ValueError(f"bootstrap needs at least one case, got n={n}.")
    if n_resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"bad bootstrap settings: n_resamples={n_resamples}, confidence={confidence}.")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        value = statistic(rng.integers(0, n, size=n))
        if _is_defined(value):
            values.append(float(value))
    if not values:
        return None
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarise(
    rows: Sequence[Mapping[str, Any]],
    key_metric: str,
    case_metrics: Sequence[str] = (),
    dataset_metrics: Mapping[str, DatasetMetric] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the flat ``metrics.json`` object of DESIGN.md from per-case rows.

    Args:
        rows: one mapping per case.
        key_metric: the metric the bundle selects checkpoints by; must be among the metrics.
        case_metrics: columns of ``rows`` to average over cases.
        dataset_metrics: name → function of a list of rows (e.g. AUC over all patches).
        n_resamples, seed: bootstrap settings.

    Returns:
        ``{"key_metric": name, name: value, name + "_ci95": [low, high], ..., "num_cases": n}``; undefined
        values are ``None`` and every interval contains its point estimate.

    Raises:
        ValueError: no rows, or ``key_metric`` is not one of the metrics.
    """
    dataset_metrics = dict(dataset_metrics or {})
    if not rows:
        raise ValueError("no cases to evaluate: the evaluation produced no per-case rows.")
    if key_metric not in case_metrics and key_metric not in dataset_metrics:
        raise ValueError(f"key_metric '{key_metric}' is not among the metrics "
                         f"{list(case_metrics) + list(dataset_metrics)}.")
    n = len(rows)
    summary: dict[str, Any] = {"key_metric": key_metric}
    for name in case_metrics:
        column = np.array([float(r[name]) if _is_defined(r.get(name)) else np.nan for r in rows], dtype=float)
        undefined = int(np.isnan(column).sum())

        def mean_of(idx: np.ndarray, column: np.ndarray = column) -> float | None:
            picked = column[idx]
            picked = picked[~np.isnan(picked)]
            return float(picked.mean()) if picked.size else None

        _add(summary, name, mean_of(np.arange(n)), bootstrap_ci(mean_of, n, n_resamples, seed))
        if undefined:
            summary[f"{name}_num_undefined"] = undefined
    for name, fn in dataset_metrics.items():

        def on_rows(idx: np.ndarray, fn: DatasetMetric = fn) -> float | None:
            return fn([rows[i] for i in idx])

        _add(summary, name, on_rows(np.arange(n)), bootstrap_ci(on_rows, n, n_resamples, seed))
    summary["num_cases"] = n
    return summary


def _add(summary: dict[str, Any], name: str, point: float | None, ci: tuple[float, float] | None) -> None:
    if not _is_defined(point):
        summary[name] = None
        summary[f"{name}_ci95"] = None
        return
    point = float(point)
    summary[name] = point
    if ci is None:
        summary[f"{name}_ci95"] = [point, point]
    else:  # clamp: a percentile interval need not contain the point estimate of a skewed statistic
        summary[f"{name}_ci95"] = [min(ci[0], point), max(ci[1], point)]


def write_evaluation(
    output_dir: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics_per_case.csv`` into ``output_dir`` atomically; return both paths."""
    output_dir = Path(str(output_dir))
    metrics_path, per_case_path = output_dir / "metrics.json", output_dir / "metrics_per_case.csv"
    write_csv(per_case_path, [dict(r) for r in rows])
    write_json(metrics_path, dict(summary))
    return metrics_path, per_case_path
