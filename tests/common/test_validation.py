"""Tests of ``common.validation``: every problem is collected and reported at once, naming its file."""

from __future__ import annotations

import numpy as np
import pytest

from common.validation import (
    BatchFailure,
    DatasetError,
    Problems,
    check_dir,
    check_file,
    check_finite,
    check_labels,
    run_each,
)


def test_problems_collects_and_raises_all(tmp_path):
    problems = Problems("brain dataset /data/x")
    assert not problems and len(problems) == 0
    problems.raise_if_any()  # nothing recorded: no error
    assert problems.check(True, "case_1", "fine") is True
    assert problems.check(False, tmp_path / "case_2.nii.gz", "image has 3 channels, expected 4") is False
    problems.add("case_3", "label missing")
    assert problems and len(problems) == 2
    with pytest.raises(DatasetError) as info:
        problems.raise_if_any()
    message = str(info.value)
    assert message.startswith("brain dataset /data/x: 2 problem(s) found, nothing was run:")
    assert f"  - {tmp_path / 'case_2.nii.gz'}: image has 3 channels, expected 4" in message
    assert "  - case_3: label missing" in message
    assert "case_1" not in message
    assert info.value.problems == [(str(tmp_path / "case_2.nii.gz"), "image has 3 channels, expected 4"),
                                   ("case_3", "label missing")]
    assert isinstance(info.value, ValueError)


def test_check_file(tmp_path):
    (tmp_path / "empty.nii.gz").touch()
    (tmp_path / "good.nii.gz").write_bytes(b"data")
    (tmp_path / "folder").mkdir()
    problems = Problems("dataset")
    assert check_file(tmp_path / "good.nii.gz", problems)
    assert not check_file(tmp_path / "missing.nii.gz", problems, what="label")
    assert not check_file(tmp_path / "empty.nii.gz", problems, what="image")
    assert not check_file(tmp_path / "folder", problems)
    with pytest.raises(DatasetError, match=r"3 problem\(s\)") as info:
        problems.raise_if_any()
    message = str(info.value)
    assert f"{tmp_path / 'missing.nii.gz'}: label is missing" in message
    assert f"{tmp_path / 'empty.nii.gz'}: image is empty (0 bytes)" in message
    assert f"{tmp_path / 'folder'}: file is not a regular file" in message
    assert "good.nii.gz" not in message


def test_check_dir_names_the_override(tmp_path):
    problems = Problems("dataset")
    assert check_dir(tmp_path, problems)
    assert not check_dir(tmp_path / "nope", problems, what="dataset folder", override="--dataset_dir")
    assert problems.items == [(str(tmp_path / "nope"), "dataset folder does not exist (set --dataset_dir)")]


def test_check_labels_lists_out_of_range_values():
    problems = Problems("labels")
    assert check_labels(np.array([[0, 1], [2, 4]]), [0, 1, 2, 4], "ok.nii.gz", problems)
    assert check_labels(np.array([0.0, 1.0]), [0, 1], "float-ok.nii.gz", problems)
    assert not check_labels(np.array([[0, 1], [3, 7]]), [0, 1, 2], "bad.nii.gz", problems)
    assert not check_labels(np.array([0.0, 0.5]), [0, 1], "fraction.nii.gz", problems)
    assert not check_labels(np.array([0.0, np.nan]), [0, 1], "nan.nii.gz", problems)
    assert problems.items == [
        ("bad.nii.gz", "label values {3, 7} outside the allowed [0, 1, 2]"),
        ("fraction.nii.gz", "label values {0.5} outside the allowed [0, 1]"),
        ("nan.nii.gz", "label map has NaN/Inf values"),
    ]


def test_check_finite_counts_bad_values():
    problems = Problems("images")
    assert check_finite(np.ones((2, 2)), "a", problems)
    assert check_finite(np.arange(4), "ints", problems)
    data = np.ones((3, 3), dtype=np.float32)
    data[0, 0], data[1, 1], data[2, 2] = np.nan, np.nan, np.inf
    assert not check_finite(data, "case_7/t1.nii.gz", problems)
    assert problems.items == [("case_7/t1.nii.gz", "3 NaN/Inf value(s)")]


def test_run_each_processes_good_items_and_names_every_bad_one():
    processed = []

    def work(name: str) -> str:
        if name.startswith("bad"):
            raise ValueError(f"cannot read {name}")
        processed.append(name)
        return name.upper()

    assert run_each(["a", "b"], work) == ["A", "B"]
    processed.clear()
    items = ["a", "bad1", "b", "bad2", "c"]
    with pytest.raises(BatchFailure) as info:
        run_each(items, work, name_of=lambda s: f"<{s}>", what="inference")
    assert processed == ["a", "b", "c"]  # items after a failure still ran
    message = str(info.value)
    assert message.startswith("inference: 2 input(s) failed (3 processed):")
    assert "  - <bad1>: ValueError: cannot read bad1" in message
    assert "  - <bad2>: ValueError: cannot read bad2" in message
    assert info.value.done == 3 and [n for n, _ in info.value.failures] == ["<bad1>", "<bad2>"]
