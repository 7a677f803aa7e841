"""How the collection writes numbers for people: metric values, 95 % CIs, units, wall times.

One formatter for the main job's terminal summary (``common.main_job``) and the Markdown report (``common.report``),
so the same metric reads the same in both.
"""

from __future__ import annotations

import math
import re
from typing import Any


def fmt(value: Any, digits: int = 4) -> str:
    """A metric value: ``digits`` decimals without trailing zeros (``0.8125`` -> ``"0.8125"``, ``0.8`` -> ``"0.8"``),
    ``digits`` significant digits from 1000 on (``12345.6`` -> ``"1.235e+04"``); ``"n/a"`` for None, NaN, infinity
    and anything that is not a number (a ``null`` of ``metrics.json`` among them)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"


def fmt_ci(low: Any, high: Any) -> str:
    """A 95 % CI as ``"[low, high]"`` with :func:`fmt`'s numbers; ``"n/a"`` when a bound is missing."""
    return "n/a" if low is None or high is None else f"[{fmt(low)}, {fmt(high)}]"


def duration(seconds: float | None) -> str:
    """A wall time: ``"42 s"`` under two minutes, ``"3.1 min"`` from two minutes on; ``"n/a"`` when unknown."""
    if seconds is None:
        return "n/a"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def metric_unit(name: str) -> str:
    """The unit of a metric or loss, from the names the bundles log (``hd95_tc`` is in mm, ``ef_mae`` in percentage
    points, ``mass_bias`` in g, ``ef_corr`` a correlation, ``ef_interval_coverage`` a fraction); a score in [0, 1]
    otherwise."""
    low = name.lower()
    if "loss" in low:
        return "loss (unitless)"
    if re.search(r"(^|_)hd95($|_)", low):
        return "mm"
    if low.endswith(("_corr", "_spearman")):
        return "correlation (-1 to 1)"
    if "coverage" in low:  # ef_interval_coverage: the share of patients inside their interval
        return "fraction (0-1)"
    if low.endswith("_ml"):
        return "ml"
    if low.endswith("_pct") or re.search(r"(^|_)(lv|rv)?ef($|_)", low):  # ejection fraction errors, rvef_mae too
        return "%"
    if re.search(r"(^|_)mass($|_)", low):  # mass_bias, myo_mass_g (mass_corr is a correlation, above)
        return "g"
    return "score (0-1)"
