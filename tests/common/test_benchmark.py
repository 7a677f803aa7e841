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
