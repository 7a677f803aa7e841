"""The pieces of ``benchmarks/cpu_inference.py`` that decide its numbers, on tiny inputs (the sweep itself takes tens
of minutes and is run by hand: see the brain model card)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bundle_harness import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cpu_inference", REPO / "benchmarks" / "cpu_inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_zscore_uses_the_nonzero_voxels_of_each_channel(bench):
    data = np.array([[0.0, 1.0, 3.0, 0.0], [2.0, 2.0, 4.0, 4.0]], np.float32)
    # channel 0: non-zero 1, 3 -> mean 2, std 1; zeros stay 0. channel 1: mean 3, std 1.
    np.testing.assert_allclose(bench.zscore(data), [[0.0, -1.0, 1.0, 0.0], [-1.0, -1.0, 1.0, 1.0]], atol=1e-6)


def test_dice_of_masks(bench):
    a = np.array([1, 1, 0, 0], bool)
    assert bench.dice(a, np.array([1, 0, 1, 0], bool)) == pytest.approx(0.5)
    assert bench.dice(np.zeros(4, bool), np.zeros(4, bool)) == 1.0  # both empty


def test_time_split_shares_sum_to_one_and_name_the_convolutions(bench):
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.ReLU()).eval()
    split = bench.time_split(lambda x, n: n(x), torch.rand(1, 1, 16, 16, 16), net, torch.no_grad)
    assert sum(split.values()) == pytest.approx(1.0)
    assert split["convolution"] > 0 and split["group_norm"] > 0


def test_every_config_names_known_settings_only(bench):
    known = {"inference_mode", "channels_last", "env", "mallopt", "backend", "roi", "overlap", "sw_batch", "crop",
             "compile", "profile", "preload"}
    for name, settings in bench.CONFIGS.items():
        assert set(settings) <= known, (name, set(settings) - known)
    assert bench.CONFIGS["peer"] == {}


def test_allocator_preload_is_found_like_the_linker_and_seen_in_the_process(bench):
    assert bench.preload("no_such_allocator_library_xyz") == {}  # not installed: the sweep reports it, no time
    env = bench.preload("jemalloc")
    if not env:
        pytest.skip("libjemalloc2 is not installed (apt-get install libjemalloc2)")
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('b', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print(m.loaded_allocator())")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "benchmarks" / "cpu_inference.py")],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "jemalloc", proc.stderr
    if "LD_PRELOAD" not in os.environ:
        assert bench.loaded_allocator() == "glibc"  # this process: the default allocator
