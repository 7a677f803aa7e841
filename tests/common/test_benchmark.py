"""common.benchmark: one unit (MiB) for peak memory and one results file name in every bundle's benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


def _fake_measure(calls: list, peaks: list, out):
    """A stand-in for ``benchmark.measure``: records (argv, log name, env), leaves a ``metrics.json`` in ``out`` and
    returns wall time = the call's number (s) and the next of ``peaks`` (MiB)."""

    def measure(command, log, cwd=benchmark.REPO, env=None):
        calls.append(([str(c) for c in command], Path(str(log)).name, env))
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text('{"froc": 0.5}')
        return {"wall_s": float(len(calls)), "peak_rss_mib": peaks.pop(0)}

    return measure


def test_train_evaluate_infer_runs_three_workflow_commands_and_keeps_each_ones_peak(tmp_path, monkeypatch):
    work, calls = tmp_path / "work", []
    out, run = work / "out", [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    monkeypatch.setattr(benchmark, "measure", _fake_measure(calls, [500.0, 300.0, 700.0], out))
    result = benchmark.train_evaluate_infer("/b", work, "/train", "/test", "/in", workflow="_det",
                                            train_args=["--epochs", 2], env={"X": "1"})
    assert result == {"train_s": 1.0, "peak_rss_train_mib": 500.0, "evaluate_s": 2.0, "metrics": {"froc": 0.5},
                      "inference_s": 3.0, "peak_rss_mib": 700.0}
    assert [c[0] for c in calls] == [
        run + ["['/b/configs/train_det.json']", "--dataset_dir", "/train", "--output_dir", str(out), "--epochs", "2"],
        run + ["['/b/configs/train_det.json','/b/configs/evaluate_det.json']", "--dataset_dir", "/test",
               "--output_dir", str(out)],
        run + ["['/b/configs/inference_det.json']", "--input_dir", "/in", "--output_dir", str(work / "pred"),
               "--ckpt_path", str(out / "models" / "model.pt")]]
    assert [(c[1], c[2]) for c in calls] == [("train_det.log", {"X": "1"}), ("evaluate_det.log", {"X": "1"}),
                                             ("inference_det.log", {"X": "1"})]
    # without training the model already in <work>/out is evaluated; the peak is the larger of the two commands run
    calls.clear()
    monkeypatch.setattr(benchmark, "measure", _fake_measure(calls, [300.0, 200.0], out))
    assert benchmark.train_evaluate_infer("/b", work, "/train", "/test", "/in", train=False) == {
        "evaluate_s": 1.0, "metrics": {"froc": 0.5}, "inference_s": 2.0, "peak_rss_mib": 300.0}
    assert [c[1] for c in calls] == ["evaluate.log", "inference.log"]


def test_synthesize_once_reuses_a_finished_set(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(benchmark, "measure", _fake_measure(calls, [100.0], tmp_path / "out"))
    made = benchmark.synthesize_once("/b", tmp_path / "set", "done.csv", tmp_path / "synth.log", "--seed", 1,
                                     config="synthesize_det")
    assert made == 1.0 and calls[0][0][-5:] == ["['/b/configs/synthesize_det.json']", "--dataset_dir",
                                               str(tmp_path / "set"), "--seed", "1"]
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "done.csv").write_text("")
    assert benchmark.synthesize_once("/b", tmp_path / "set", "done.csv", tmp_path / "synth.log") is None
    assert len(calls) == 1  # nothing run the second time
