"""Tests of ``common.io``: a file appears whole or not at all, and failures name the file."""

from __future__ import annotations

import csv
import gzip
import json
import os
import stat

import numpy as np
import pytest

from common.io import OutputError, atomic_path, save_nifti, save_png, write_csv, write_json, write_text


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_write_text_and_json(tmp_path):
    write_text(tmp_path / "a" / "b.txt", "hello")  # missing folders are created
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"
    write_json(tmp_path / "m.json", {"x": 1.5, "y": None, "z": [1, 2]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": 1.5, "y": None, "z": [1, 2]}
    assert _entries(tmp_path) == ["a", "m.json"]  # no temporary file left


@pytest.mark.parametrize("value", [float("nan"), float("inf"), np.float64("nan")])
def test_write_json_refuses_nan(tmp_path, value):
    with pytest.raises(ValueError, match=r"Out of range float values are not JSON compliant"):
        write_json(tmp_path / "m.json", {"dice": value})
    assert _entries(tmp_path) == []


def test_writer_raising_midway_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp, open(tmp, "w") as f:
            f.write("half of it")
            raise RuntimeError("boom")
    assert _entries(tmp_path) == []


def test_csv_writer_failing_after_the_header_leaves_nothing(tmp_path):
    # the second row has a column missing from the fieldnames: DictWriter raises after writing a row
    with pytest.raises(ValueError, match=r"dict contains fields not in fieldnames: 'extra'"):
        write_csv(tmp_path / "t.csv", [{"case": "a"}, {"case": "b", "extra": 1}], fieldnames=["case"])
    assert _entries(tmp_path) == []


def test_failed_rewrite_keeps_the_old_file(tmp_path):
    write_json(tmp_path / "m.json", {"v": 1})
    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"v": float("nan")})
    with pytest.raises(KeyboardInterrupt):  # also for BaseException (a kill during the write)
        with atomic_path(tmp_path / "m.json") as tmp:
            open(tmp, "w").write("{")
            raise KeyboardInterrupt
    assert json.loads((tmp_path / "m.json").read_text()) == {"v": 1}
    assert _entries(tmp_path) == ["m.json"]


def test_written_files_have_normal_permissions(tmp_path):
    """Outputs get the mode a plain open() gives (0666 minus umask), not mkstemp's private 0600."""
    umask = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as f:
            f.write("x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode)
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    finally:
        os.umask(umask)


def test_output_error_when_parent_is_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    target = tmp_path / "file" / "metrics.json"
    with pytest.raises(OutputError, match=rf"cannot write {target}"):
        write_json(target, {"a": 1})
    assert issubclass(OutputError, OSError)
    assert _entries(tmp_path) == ["file"]


def test_output_error_when_target_is_a_folder(tmp_path):
    (tmp_path / "m.json").mkdir()
    with pytest.raises(OutputError, match=rf"cannot write {tmp_path / 'm.json'}"):
        write_json(tmp_path / "m.json", {"a": 1})
    assert _entries(tmp_path) == ["m.json"]  # the temporary file was removed


def test_output_error_for_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: chmod does not make a folder read-only")
        with pytest.raises(OutputError, match=rf"cannot write {folder / 'x.json'}: Permission denied"):
            write_json(folder / "x.json", {"a": 1})
        assert _entries(folder) == []
    finally:
        folder.chmod(0o700)


def test_temporary_name_keeps_nii_gz_suffix(tmp_path):
    with atomic_path(tmp_path / "case_001.nii.gz") as tmp:
        assert tmp.endswith(".nii.gz") and os.path.dirname(tmp) == str(tmp_path)
        assert os.path.basename(tmp).startswith(".")  # hidden while being written
        open(tmp, "wb").close()
    with atomic_path(tmp_path / "mask.png") as tmp:
        assert tmp.endswith(".png") and not tmp.endswith(".nii.gz")
        open(tmp, "wb").close()
    assert _entries(tmp_path) == ["case_001.nii.gz", "mask.png"]


def test_save_nifti_round_trip(tmp_path):
    nib = pytest.importorskip("nibabel")
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    affine = np.array([[0.5, 0, 0, 10], [0, 1.5, 0, -3], [0, 0, 2.0, 7], [0, 0, 0, 1]])
    path = tmp_path / "pred" / "case_001.nii.gz"
    save_nifti(data, affine, path)
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # really gzip-compressed: nibabel saw the .nii.gz suffix
    with gzip.open(path) as f:
        f.read(10)
    image = nib.load(path)
    np.testing.assert_array_equal(np.asarray(image.dataobj), data)
    np.testing.assert_allclose(image.affine, affine)
    # with a reference header the dtype of the array is kept
    save_nifti(data.astype(np.int16), affine, tmp_path / "h.nii.gz", header=image.header)
    assert nib.load(tmp_path / "h.nii.gz").get_data_dtype() == np.int16
    assert _entries(path.parent) == ["case_001.nii.gz"]


def test_save_png_round_trip(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    data = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    save_png(data, tmp_path / "m.png")
    np.testing.assert_array_equal(np.asarray(image_module.open(tmp_path / "m.png")), data)


def test_write_csv_columns_and_cells(tmp_path):
    rows = [{"case": "a", "dice": 0.123456789}, {"case": "b", "hd95": None, "dice": float("nan")},
            {"case": "c", "dice": np.float32(0.5), "hd95": 3}]
    write_csv(tmp_path / "t.csv", rows)
    with open(tmp_path / "t.csv", newline="") as f:
        reader = csv.DictReader(f)
        table = list(reader)
    assert reader.fieldnames == ["case", "dice", "hd95"]  # first-seen order
    assert table[0] == {"case": "a", "dice": "0.123457", "hd95": ""}
    assert table[1] == {"case": "b", "dice": "", "hd95": ""}  # None and NaN are empty cells
    assert table[2] == {"case": "c", "dice": "0.5", "hd95": "3"}


def test_save_figure_writes_a_png_atomically(tmp_path):
    from matplotlib.figure import Figure

    from common.io import save_figure

    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1], [1, 0])
    path = tmp_path / "plot.png"
    assert save_figure(fig, path, dpi=20) == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no temporary file left
