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
