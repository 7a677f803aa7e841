"""common.benchmark: one unit (MiB) for peak memory and one results file name in every bundle's benchmark."""

from __future__ import annotations

import json
import sys

import pytest

from common import benchmark


def test_a_command_is_timed_and_its_own_peak_memory_reported_in_mib(tmp_path):
    # a child that holds 300 MiB of touched memory: its peak RSS is at least that, and far below 300 GiB / KiB mixups
    hold = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.2)"
    measured = benchmark.measure([sys.executable, "-c", hold], tmp_path / "step.log")
    assert 300 <= measured["peak_rss_mib"] < 2000
    assert measured["wall_s"] >= 0.2


def test_a_failed_command_names_its_log(tmp_path):
    with pytest.raises(RuntimeError, match="step.log"):
        benchmark.measure([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "step.log")


def test_kib_to_mib_and_the_results_file(tmp_path):
    assert benchmark.kib_to_mib(1536) == 1.5
    path = benchmark.write_results(tmp_path, {"peak_rss_mib": 1.5})
    assert path == tmp_path / "benchmark_results.json" and json.loads(path.read_text()) == {"peak_rss_mib": 1.5}
    assert benchmark.config_list("/b", "train", "tiny") == "['/b/configs/train.json','/b/configs/tiny.json']"


def test_median_ms_per_item_warms_up_then_times_prepare_plus_forward_and_forward_alone(monkeypatch):
    calls = []
    clock = iter(range(100))

    def fake_clock():  # one tick of one second per reading
        return float(next(clock))

    def prepare(item):
        calls.append(("prepare", item))
        return item * 10

    def forward(x):
        calls.append(("forward", x))

    monkeypatch.setattr(benchmark.time, "perf_counter", fake_clock)
    total, alone = benchmark.median_ms_per_item([1, 2, 3], prepare, forward, warmup=1)
    monkeypatch.undo()
    # warm-up on item 1 (untimed), then each item: readings start, middle, end one second apart: 2 s end to end,
    # 1 s for forward alone
    assert calls[:2] == [("prepare", 1), ("forward", 10)] and calls[2:] == [
        ("prepare", 1), ("forward", 10), ("prepare", 2), ("forward", 20), ("prepare", 3), ("forward", 30)]
    assert (total, alone) == (2000.0, 1000.0)
    with pytest.raises(ValueError, match="no items"):
        benchmark.median_ms_per_item([], prepare, forward)
