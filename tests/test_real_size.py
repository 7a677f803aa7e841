"""Opt-in (``pytest -m slow``): the real-size CPU proof of issue 17 for every bundle with ``configs/real_data.json``.

Each case runs ``benchmarks/real_size.py --area <area>``: a phantom at the real data set's size, then the standard
``monai.bundle run`` over ``train.json`` + ``real_data.json`` for one training iteration and one validation pass.
Minutes per bundle on 2 cores (brain the longest); run them one at a time, on an otherwise idle machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bundle_harness import BUNDLES, REPO

AREAS = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "real_data.json").is_file())


@pytest.mark.slow
@pytest.mark.parametrize("area", AREAS)
def test_real_size_training_iteration_and_validation_complete(area, tmp_path):
    output = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "benchmarks/real_size.py", "--area", area, "--work_dir", str(tmp_path),
                           "--output", str(output)], cwd=REPO, capture_output=True, text=True, timeout=3 * 3600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert output.is_file(), f"{area}: no result written\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(output.read_text())
    train = result["train"]
    assert proc.returncode == 0 and result["completed"], f"{area}: {json.dumps(result, indent=1)}"
    assert train["seconds_per_iteration"] > 0 and train["validation_pass_s"] > 0
    assert train["peak_rss_mib"] > 0 and train["model_written"]


def _benchmark(name: str):
    import importlib.util

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_gpu_check_refuses_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the refusal path does not apply")
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--area", "eye"], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr.strip().splitlines()[-1]


def test_gpu_check_iterations_per_second_leaves_the_first_iteration_out():
    gpu_check = _benchmark("gpu_check")
    log = "\n".join([
        "2026-11-30 10:00:00,000 - StatsHandler - INFO - Epoch: 1/1, Iter: 1/4 -- train_loss: 0.9",  # warm-up
        "2026-11-30 10:00:00,500 - StatsHandler - INFO - Epoch: 1/1, Iter: 2/4 -- train_loss: 0.8",
        "2026-11-30 10:00:00,750 - StatsHandler - INFO - Epoch: 1/1, Iter: 3/4 -- train_loss: 0.7",
        "2026-11-30 10:00:01,000 - StatsHandler - INFO - Epoch: 1/1, Iter: 4/4 -- train_loss: 0.6",
    ])
    # a stamp is written when its iteration ends: iterations 2, 3, 4 take 0.5 + 0.25 + 0.25 = 1.0 s, so 3 it/s; the
    # first iteration (CUDA warm-up, before the first stamp) is left out, unlike the epoch time (4 it in 10 s)
    assert gpu_check.iterations_per_second(log, 4, 10.0) == pytest.approx(3.0)
    assert gpu_check.iterations_per_second("no stamps", 4, 8.0) == pytest.approx(0.5)  # fallback: 4 it in 8 s
    assert gpu_check.iterations_per_second("no stamps", 4, None) is None


def test_real_size_reads_ignite_epoch_times():
    real_size = _benchmark("real_size")
    log = ("2026-11-30 10:00:00,000 - ignite.engine.engine.SupervisedTrainer - INFO - Epoch[1] Complete. "
           "Time taken: 00:01:02.500\n"
           "2026-11-30 10:00:00,000 - ignite.engine.engine.SupervisedEvaluator - INFO - Epoch[1] Complete. "
           "Time taken: 01:00:00.250\n")
    assert real_size.engine_seconds(log, "SupervisedTrainer") == [62.5]
    assert real_size.engine_seconds(log, "SupervisedEvaluator") == [3600.25]


def test_real_size_first_iteration_from_log_stamps():
    """The trainer's epoch time includes its epoch-end handlers (the validation): the iteration is timed from the
    trainer's start to the StatsHandler line of iteration 1 instead (here 1 min 2.5 s)."""
    real_size = _benchmark("real_size")
    log = ("2026-11-30 10:00:00,250 - ignite.engine.engine.SupervisedTrainer - INFO - Engine run resuming from "
           "iteration 0, epoch 0 until 1 epochs\n"
           "2026-11-30 10:01:02,750 - INFO - Epoch: 1/1, Iter: 1/1 -- train_loss: 0.9946 \n"
           "2026-11-30 10:05:00,000 - ignite.engine.engine.SupervisedTrainer - INFO - Epoch[1] Complete. "
           "Time taken: 00:05:00.000\n")
    assert real_size.first_iteration_seconds(log) == pytest.approx(62.5)
    assert real_size.first_iteration_seconds("no trainer here") is None
