"""Resume after SIGKILL, for one 2D bundle (eye; in CI) and one 3D bundle (brain; ``pytest -m slow``).

A tiny training of 3 epochs is killed with SIGKILL as soon as the checkpoint of epoch 1 is on disk (so during
epoch 2); the checkpoint written before the kill must still load, and ``--resume true`` must finish the 3 epochs.
Then the newest checkpoint is truncated: resuming gives a clear error naming it, and the earlier one is left intact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bundle_harness import BUNDLES, REPO, config_list, run_monai_bundle

AREAS = [a for a in ("eye", "brain") if (BUNDLES / a / "configs" / "tiny.json").is_file()]
pytestmark = pytest.mark.skipif(not AREAS, reason="neither the eye nor the brain bundle is present")


@pytest.fixture(scope="module", params=[pytest.param(a, marks=[pytest.mark.slow] if a != AREAS[0] else [])
                                        for a in AREAS])  # the mechanism is common.checkpoint's: one bundle in CI
def dataset(request, tmp_path_factory):
    area = request.param
    data = tmp_path_factory.mktemp(f"{area}_resume") / "data"
    run_monai_bundle(["run", "--config_file", config_list(area, "synthesize", "tiny"), "--dataset_dir", data,
                      "--seed", 1])
    return area, data


def train_args(area, data, out, *extra, epochs=3):
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_list(area, "train", "tiny"),
            "--dataset_dir", str(data), "--output_dir", str(out), "--epochs", str(epochs), "--val_interval", "1",
            *extra]


def test_sigkill_during_epoch_2_then_resume_and_corrupt_checkpoint(dataset, tmp_path):
    area, data = dataset
    out = tmp_path / "out"
    first = out / "models" / "checkpoint_epoch=1.pt"
    proc = subprocess.Popen(train_args(area, data, out), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert first.exists(), "training ended or timed out before writing the epoch-1 checkpoint"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(first, map_location="cpu", weights_only=False)  # the checkpoint before the kill is whole
    assert state["epoch"] == 1 and "optimizer" in state and "rng" in state
    assert not (out / "models" / "checkpoint_epoch=3.pt").exists(), "the kill came too late to test anything"

    split_before = (out / "splits.json").read_bytes()
    # another seed on resume: the split is still the one in splits.json (re-read, as nnU-Net's splits_final.json)
    resumed = run_monai_bundle(train_args(area, data, out, "--resume", "true", "--seed", "5")[3:], cwd=REPO)
    assert f"split read from {out / 'splits.json'}" in resumed.stdout + resumed.stderr
    assert (out / "splits.json").read_bytes() == split_before
    assert (out / "models" / "checkpoint_epoch=3.pt").is_file()
    final = torch.load(out / "models" / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=False)
    assert final["epoch"] == 3
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert (out / "models" / "model.pt").is_file()

    # a damaged newest checkpoint: a clear error naming it, and the one before it left intact
    newest, previous = out / "models" / "checkpoint_epoch=3.pt", out / "models" / "checkpoint_epoch=2.pt"
    payload = newest.read_bytes()
    newest.write_bytes(payload[: len(payload) // 2])
    failed = run_monai_bundle(train_args(area, data, out, "--resume", "true", epochs=4)[3:], cwd=REPO, expect_ok=False)
    assert failed.returncode != 0
    assert "checkpoint_epoch=3.pt" in failed.stderr and "corrupt" in failed.stderr
    assert torch.load(previous, map_location="cpu", weights_only=False)["epoch"] == 2
