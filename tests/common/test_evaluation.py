"""Tests of ``common.evaluation`` (bootstrap CIs, metrics.json / metrics_per_case.csv) and its ignite handler."""

from __future__ import annotations

import csv
import inspect
import json
import math

import numpy as np
import pytest
from ignite.engine import Engine, Events

from common.evaluation import bootstrap_ci, summarise, write_evaluation
from common.handlers import EvaluationWriter, scalar_metrics


def _mean_of(values):
    values = np.asarray(values, dtype=float)
    return lambda idx: float(values[idx].mean())


# ---------------------------------------------------------------------------------------------- bootstrap_ci


def test_constant_values_give_zero_width_interval():
    low, high = bootstrap_ci(_mean_of([0.25] * 7), 7)
    assert low == pytest.approx(0.25) and high == pytest.approx(0.25)


def test_default_is_at_least_1000_resamples():
    assert inspect.signature(bootstrap_ci).parameters["n_resamples"].default >= 1000
    calls = []
    bootstrap_ci(lambda idx: calls.append(idx) or float(len(idx)), 5)
    assert len(calls) >= 1000
    assert all(len(idx) == 5 and idx.min() >= 0 and idx.max() < 5 for idx in calls)  # n draws with replacement


def test_fixed_seed_is_deterministic_and_seed_matters():
    values = np.random.default_rng(0).random(30)
    first = bootstrap_ci(_mean_of(values), 30, seed=7)
    assert bootstrap_ci(_mean_of(values), 30, seed=7) == first
    assert bootstrap_ci(_mean_of(values), 30, seed=8) != first
    assert first[0] < values.mean() < first[1]


def test_interval_matches_a_direct_percentile_bootstrap():
    values = np.random.default_rng(1).normal(size=20)
    rng = np.random.default_rng(3)
    means = [values[rng.integers(0, 20, size=20)].mean() for _ in range(1000)]
    expected = np.quantile(means, [0.025, 0.975])
    assert bootstrap_ci(_mean_of(values), 20, n_resamples=1000, seed=3) == pytest.approx(tuple(expected))


def test_undefined_statistic_everywhere_gives_none():
    assert bootstrap_ci(lambda idx: None, 4, n_resamples=10) is None
    assert bootstrap_ci(lambda idx: float("nan"), 4, n_resamples=10) is None


@pytest.mark.parametrize("kwargs,match", [
    ({"n": 0}, r"bootstrap needs at least one case, got n=0"),
    ({"n": 3, "n_resamples": 0}, r"bad bootstrap settings: n_resamples=0"),
    ({"n": 3, "confidence": 1.0}, r"bad bootstrap settings: .*confidence=1.0"),
])
def test_bootstrap_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(lambda idx: 0.0, **kwargs)


# ------------------------------------------------------------------------------------------------- summarise

ROWS = [
    {"case": "a", "dice": 0.5, "hd95": 2.0, "never": None, "correct": 1},
    {"case": "b", "dice": 0.7, "hd95": None, "never": float("nan"), "correct": 0},
    {"case": "c", "dice": 0.9, "hd95": float("nan"), "never": None, "correct": 1},
    {"case": "d", "dice": 0.3, "hd95": 6.0, "never": None, "correct": 1},
]


def accuracy(rows):
    return sum(r["correct"] for r in rows) / len(rows)


def test_summarise_point_estimates_and_undefined_counts():
    s = summarise(ROWS, "dice", case_metrics=["dice", "hd95", "never"], dataset_metrics={"accuracy": accuracy},
                  n_resamples=1000, seed=0)
    assert s["key_metric"] == "dice" and s["num_cases"] == 4
    assert s["dice"] == pytest.approx((0.5 + 0.7 + 0.9 + 0.3) / 4)  # 0.6
    assert "dice_num_undefined" not in s
    assert s["hd95"] == pytest.approx((2.0 + 6.0) / 2)  # None and NaN left out: 4.0
    assert s["hd95_num_undefined"] == 2
    assert s["never"] is None and s["never_ci95"] is None and s["never_num_undefined"] == 4
    assert s["accuracy"] == pytest.approx(3 / 4)
    for name in ("dice", "hd95", "accuracy"):
        low, high = s[f"{name}_ci95"]
        assert low <= s[name] <= high
    text = json.dumps(s, allow_nan=False)  # null, never NaN
    assert '"never": null' in text


def test_dataset_metric_is_recomputed_on_resamples():
    s = summarise(ROWS, "accuracy", dataset_metrics={"accuracy": accuracy}, n_resamples=1000, seed=5)
    correct = np.array([r["correct"] for r in ROWS], dtype=float)
    expected = bootstrap_ci(lambda idx: float(correct[idx].mean()), 4, n_resamples=1000, seed=5)
    assert s["accuracy_ci95"] == pytest.approx(list(expected))
    assert s["accuracy_ci95"][0] < s["accuracy_ci95"][1]  # not a degenerate interval


def test_interval_is_clamped_to_contain_a_skewed_point_estimate():
    # the fraction of distinct cases is 1 on the data but about 0.63 on every resample with replacement,
    # so the raw percentile interval lies entirely below the point estimate
    rows = [{"case": str(i)} for i in range(20)]
    distinct = {"distinct": lambda rs: len({r["case"] for r in rs}) / len(rs)}
    s = summarise(rows, "distinct", dataset_metrics=distinct, n_resamples=1000, seed=0)
    raw = bootstrap_ci(lambda idx: len(set(idx.tolist())) / 20, 20, n_resamples=1000, seed=0)
    assert raw[1] < 1.0  # the case really needs clamping
    assert s["distinct"] == 1.0
    assert s["distinct_ci95"] == pytest.approx([raw[0], 1.0])


def test_single_case_and_undefined_dataset_metric():
    s = summarise([{"case": "x", "dice": 0.8}], "dice", case_metrics=["dice"],
                  dataset_metrics={"auc": lambda rows: None, "nan": lambda rows: float("nan")})
    assert s["dice"] == pytest.approx(0.8) and s["dice_ci95"] == pytest.approx([0.8, 0.8])
    assert s["auc"] is None and s["auc_ci95"] is None and s["nan"] is None
    json.dumps(s, allow_nan=False)


def test_summarise_errors():
    with pytest.raises(ValueError, match=r"key_metric 'iou' is not among the metrics \['dice', 'accuracy'\]"):
        summarise(ROWS, "iou", case_metrics=["dice"], dataset_metrics={"accuracy": accuracy})
    with pytest.raises(ValueError, match=r"no cases to evaluate"):
        summarise([], "dice", case_metrics=["dice"])


def test_write_evaluation_documented_form(tmp_path):
    s = summarise(ROWS, "dice", case_metrics=["dice", "hd95"], n_resamples=1000)
    metrics_path, per_case_path = write_evaluation(tmp_path / "out", ROWS, s)
    assert metrics_path == tmp_path / "out" / "metrics.json"
    assert per_case_path == tmp_path / "out" / "metrics_per_case.csv"
    metrics = json.loads(metrics_path.read_text())
    assert metrics["key_metric"] == "dice" and metrics["num_cases"] == 4
    assert all(not isinstance(v, (dict, list)) or (k.endswith("_ci95") and len(v) == 2) for k, v in metrics.items())
    assert isinstance(metrics["dice_ci95"], list) and metrics["dice_ci95"][0] <= metrics["dice"]
    with open(per_case_path, newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["case"] for r in table] == ["a", "b", "c", "d"]
    assert float(table[0]["dice"]) == pytest.approx(0.5)
    assert table[1]["hd95"] == "" and table[2]["hd95"] == ""  # None and NaN are empty cells
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "metrics_per_case.csv"]


# ----------------------------------------------------------------------------------- handlers.EvaluationWriter


def test_scalar_metrics_splits_intervals():
    out = scalar_metrics({"key_metric": "dice", "dice": 0.5, "dice_ci95": [0.4, 0.6], "hd": None, "hd_ci95": None,
                          "hd_num_undefined": 2, "num_cases": 3})
    assert out == {"dice": 0.5, "dice_ci95_low": 0.4, "dice_ci95_high": 0.6, "hd_num_undefined": 2.0,
                   "num_cases": 3.0}


def test_evaluation_writer_on_an_ignite_engine(tmp_path):
    batches = [[("c0", 0.5), ("c1", 0.7)], [("c2", 0.9)], [("c3", None)]]

    def process(engine, batch):  # fake evaluator: per-case outputs of one batch
        return {"case": [c for c, _ in batch], "dice": [d for _, d in batch]}

    def case_rows(engine):
        out = engine.state.output
        return [{"case": c, "dice": d} for c, d in zip(out["case"], out["dice"])]

    engine = Engine(process)
    writer = EvaluationWriter(tmp_path / "eval", "dice", case_rows, case_metrics=["dice"], n_resamples=1000, seed=0)
    writer.attach(engine)
    seen_at_iteration = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen_at_iteration.append(
        (tmp_path / "eval" / "metrics.json").exists()))
    engine.run(batches, max_epochs=2)  # a second epoch starts again from no rows
    assert seen_at_iteration == [False] * 3 + [True] * 3  # written at the end of the first epoch, not before
    assert len(writer.rows) == 4
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_cases"] == 4 and metrics["dice"] == pytest.approx(0.7) and metrics["dice_num_undefined"] == 1
    with open(tmp_path / "eval" / "metrics_per_case.csv", newline="") as f:
        assert [r["case"] for r in csv.DictReader(f)] == ["c0", "c1", "c2", "c3"]
    state = engine.state.metrics
    assert state["dice"] == pytest.approx(0.7)
    assert state["dice_ci95_low"] <= 0.7 <= state["dice_ci95_high"]
    assert state["dice_ci95_low"] == pytest.approx(metrics["dice_ci95"][0])
    assert state["num_cases"] == 4.0 and state["dice_num_undefined"] == 1.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in state.values())
