"""``common.errors``: a failed command ends with the root cause, not MONAI's "Failed to evaluate" wrapper."""

from __future__ import annotations

import subprocess
import sys

from bundle_harness import REPO


def test_last_line_is_the_root_cause_of_a_wrapped_error():
    code = ("import common\n"
            "try:\n    raise FileNotFoundError('checkpoint /x/model.pt does not exist')\n"
            "except Exception as e:\n    raise RuntimeError('Failed to evaluate ConfigExpression: ...') from e\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == "ERROR: FileNotFoundError: checkpoint /x/model.pt does not exist"
    assert "Failed to evaluate ConfigExpression" in proc.stderr  # the usual traceback is still printed


def test_an_unwrapped_error_is_not_repeated():
    proc = subprocess.run([sys.executable, "-c", "import common; raise ValueError('bad /y.csv')"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == "ValueError: bad /y.csv" and "ERROR:" not in proc.stderr
