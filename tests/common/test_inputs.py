"""common.inputs: each entry of an inference input folder is predicted, used or named in a warning (issue 13 kind 6)."""

from __future__ import annotations

import logging

import pytest

from common.inputs import case_folders, folders_only, list_input_folder, pil_image_suffixes
from common.validation import DatasetError


def _classify(entry):
    if entry.is_dir():
        return "skip", "a folder"
    if entry.suffix == ".img":
        return "predict", ""
    if entry.suffix == ".lbl":
        return "used", "labels, ignored"
    return "skip", f"unknown format {entry.suffix}"


def test_each_entry_is_predicted_used_named_or_hidden(tmp_path, caplog):
    for name in ("b.img", "a.img", "a.lbl", "notes.txt", ".DS_Store", "._a.img"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    with caplog.at_level(logging.DEBUG, logger="common.inputs"):
        listing = list_input_folder(tmp_path, _classify, "images (*.img)")
    assert [p.name for p in listing.predict] == ["a.img", "b.img"]
    assert [(p.name, r) for p, r in listing.used] == [("a.lbl", "labels, ignored")]
    assert [(p.name, r) for p, r in listing.skipped] == [("notes.txt", "unknown format .txt"), ("sub", "a folder")]
    assert sorted(p.name for p in listing.hidden) == sorted(["._a.img", ".DS_Store"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{tmp_path / 'notes.txt'}: not predicted: unknown format .txt",
                        f"{tmp_path / 'sub'}: not predicted: a folder",
                        f"{tmp_path}: 2 entries not predicted (named above); 2 to predict"]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info == [f"{tmp_path / 'a.lbl'}: labels, ignored"]


def test_nothing_to_predict_names_the_folder_and_what_it_holds(tmp_path):
    (tmp_path / "scan.txt").write_text("x")
    (tmp_path / ".DS_Store").write_text("x")
    with pytest.raises(DatasetError) as info:
        list_input_folder(tmp_path, _classify, "images (*.img)")
    message = str(info.value)
    assert f"{tmp_path}: holds no images (*.img) to predict (found: scan.txt (unknown format .txt))" in message
    assert "set --input_dir" in message and ".DS_Store" not in message
    with pytest.raises(DatasetError, match="does not exist or is not a folder \\(set --input_dir\\)"):
        list_input_folder(tmp_path / "missing", _classify, "images")


def test_case_folders_and_pillow_formats(tmp_path):
    (tmp_path / "case1").mkdir()
    (tmp_path / "case1_t1.nii.gz").write_text("x")
    listing = list_input_folder(tmp_path, folders_only("expected <case>/..."), "case folders")
    assert [p.name for p in listing.predict] == ["case1"]
    assert listing.skipped == [(tmp_path / "case1_t1.nii.gz", "a file, not a case folder (expected <case>/...)")]
    suffixes = pil_image_suffixes()
    assert {".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".gif"} <= suffixes
    assert ".h5" not in suffixes and ".txt" not in suffixes  # Pillow's HDF5 stub cannot read pixels


def test_case_folders_returns_the_folders_sorted_and_names_what_was_expected(tmp_path, caplog):
    for name in ("p2", "p1"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with caplog.at_level(logging.WARNING, logger="common.inputs"):
        assert case_folders(tmp_path, "expected <patient>/Info.cfg", "patient", "cardiac inference input") == [
            tmp_path / "p1", tmp_path / "p2"]
    assert "notes.txt: not predicted: a file, not a case folder (expected <patient>/Info.cfg)" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError) as info:
        case_folders(empty, "expected <case>/<case>_t1.nii.gz", "case", "brain inference input")
    assert str(info.value).startswith(f"brain inference input {empty}")
    assert "holds no case folders (expected <case>/<case>_t1.nii.gz) to predict (found: nothing)" in str(info.value)
