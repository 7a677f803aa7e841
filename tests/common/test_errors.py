"""common.errors: the reason under MONAI's generic wrappers is what a failing run prints last."""

from __future__ import annotations

import subprocess
import sys

from common.errors import CAUSE_HEADER, describe, final_lines, root_cause
from common.validation import BatchFailure, run_each


def _monai_wrapped(inner: BaseException) -> RuntimeError:
    """``inner`` wrapped as MONAI wraps it: a transform, then a config component."""
    try:
        try:
            try:
                raise inner
            except Exception as e:
                raise RuntimeError("applying transform <scripts.transforms.LoadMassd object at 0x7f>") from e
        except Exception as e:
            raise RuntimeError("Failed to instantiate component 'run#0' with keywords: input_dir") from e
    except RuntimeError as outer:
        return outer


def test_root_cause_skips_monai_wrappers_but_keeps_our_error_over_the_library_one():
    ours = ValueError("/in/a.dcm: not a readable DICOM file (OSError: unexpected end of file)")
    ours.__cause__ = OSError("unexpected end of file")
    outer = _monai_wrapped(ours)
    assert root_cause(outer) is ours
    assert describe(outer) == "ValueError: /in/a.dcm: not a readable DICOM file (OSError: unexpected end of file)"
    assert final_lines(outer).splitlines()[-2:] == [CAUSE_HEADER, describe(outer)]


def test_an_unwrapped_error_adds_nothing():
    error = FileNotFoundError("/x/model.pt does not exist")
    assert root_cause(error) is error and final_lines(error) == ""


def test_dataloader_worker_message_is_reduced_to_the_original_line():
    error = ValueError("Caught ValueError in DataLoader worker process 0.\n"
                       "Original Traceback (most recent call last):\n"
                       "  File \"x.py\", line 1, in f\nValueError: /d/case1_t1.nii.gz: 2 NaN/Inf value(s)\n")
    assert describe(error) == "ValueError: /d/case1_t1.nii.gz: 2 NaN/Inf value(s)"


def test_run_each_records_the_reason_not_the_transform_wrapper():
    def fail(item):
        raise _monai_wrapped(ValueError(f"{item}: cannot decode pixel data"))

    try:
        run_each(["/in/a.dcm"], fail, what="breast inference")
    except BatchFailure as e:
        assert str(e).splitlines()[-1] == "  - /in/a.dcm: ValueError: /in/a.dcm: cannot decode pixel data"
    else:
        raise AssertionError("BatchFailure expected")


def test_excepthook_prints_the_reason_last_in_a_real_process():
    """A process dying of a wrapped DatasetError: stderr ends with the problem line; stdout printed before it."""
    code = (
        "import common.errors, common.validation as v\n"
        "common.errors.install()\n"
        "print('logged before the failure')\n"
        "try:\n"
        "    raise v.DatasetError('eye dataset /d', [('/d/01_test.tif', 'not a readable image')])\n"
        "except Exception as e:\n"
        "    raise RuntimeError(\"Failed to instantiate component 'run#0'\") from e\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == "  - /d/01_test.tif: not a readable image"
    assert lines[-2] == "DatasetError: eye dataset /d: 1 problem(s) found, nothing was run:"
    assert lines[-3] == CAUSE_HEADER
    assert "RuntimeError: Failed to instantiate component 'run#0'" in proc.stderr
    assert proc.stdout == "logged before the failure\n"
