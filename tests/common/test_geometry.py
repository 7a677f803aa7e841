"""common.geometry: one affine per NIfTI file (sform, else qform, else pixdim), the same in nibabel and MONAI."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from common import geometry
from common.io import save_nifti

SHAPE = (4, 6, 8)
REAL = np.array([[-3.0, 0, 0, 90], [0, -3.0, 0, 120], [0, 0, 3.0, -60], [0, 0, 0, 1]])  # 3 mm, LPS-like


def _write(path, sform=None, scode=0, qform=None, qcode=0, zooms=None):
    """A NIfTI file with hand-set transforms and codes, written from a header (no affine for nibabel to re-apply)."""
    header = nib.Nifti1Header()
    header.set_data_shape(SHAPE)
    header.set_qform(np.eye(4) if qform is None else qform, code=qcode)
    header.set_sform(np.eye(4) if sform is None else sform, code=scode)
    if zooms is not None:
        header.set_zooms(zooms)
    nib.save(nib.Nifti1Image(np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE), None, header), str(path))
    written = nib.load(str(path)).header
    assert (int(written["sform_code"]), int(written["qform_code"])) == (scode, qcode), "nibabel kept the codes"
    return str(path)


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "common.geometry" and r.levelno == logging.WARNING]


def test_quirky_header_takes_the_sform_and_warns_naming_file_and_both_voxel_sizes(tmp_path, caplog):
    path = _write(tmp_path / "quirky.nii.gz", sform=REAL, scode=1, qform=np.eye(4), qcode=1)
    assert nib.load(path).header.get_zooms() == (1.0, 1.0, 1.0), "set_qform(identity) leaves pixdim at 1 mm"
    with caplog.at_level(logging.WARNING):
        image = geometry.load(path)
        geometry.load(path)  # a second read of the same file does not warn again
    np.testing.assert_allclose(image.affine, REAL)
    assert geometry.voxel_sizes(image) == (3.0, 3.0, 3.0)
    assert image.header.get_zooms() == (3.0, 3.0, 3.0)
    np.testing.assert_allclose(image.get_qform(), REAL, atol=1e-5)  # the header now holds one geometry
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.asarray(nib.load(path).dataobj))
    (message,) = _messages(caplog)
    assert path in message and "3 x 3 x 3 mm" in message and "1 x 1 x 1 mm" in message and "using the sform" in message


def test_refused_on_request_naming_file_and_both_voxel_sizes(tmp_path):
    path = _write(tmp_path / "quirky.nii.gz", sform=REAL, scode=1, qform=np.eye(4), qcode=1)
    with pytest.raises(geometry.GeometryError) as err:
        geometry.load(path, on_mismatch="error")
    assert path in str(err.value) and "3 x 3 x 3 mm" in str(err.value) and "1 x 1 x 1 mm" in str(err.value)
    with pytest.raises(ValueError, match="on_mismatch"):
        geometry.load(path, on_mismatch="ignore")


def test_qform_when_the_sform_code_is_zero(tmp_path, caplog):
    qform = np.diag([2.0, 2.0, 5.0, 1.0])
    qform[:3, 3] = [1, 2, 3]
    path = _write(tmp_path / "q.nii.gz", sform=REAL, scode=0, qform=qform, qcode=1)  # a stale sform, code 0
    with caplog.at_level(logging.WARNING):
        g = geometry.decide(nib.load(path), path)
    assert g.source == "qform" and g.voxel_sizes == (2.0, 2.0, 5.0) and not _messages(caplog)
    np.testing.assert_allclose(g.affine, qform)


def test_pixdim_fallback_when_both_codes_are_zero(tmp_path):
    path = _write(tmp_path / "none.nii.gz", zooms=(2.0, 3.0, 4.0))
    g = geometry.decide(nib.load(path), path)
    # nibabel's Analyze-style base affine: x flipped, centred on the grid: offset = -(n - 1) / 2 * spacing (x: +)
    expected = np.array([[-2.0, 0, 0, 3.0], [0, 3.0, 0, -7.5], [0, 0, 4.0, -14.0], [0, 0, 0, 1]])
    assert g.source == "pixdim" and g.code == 0
    np.testing.assert_allclose(g.affine, expected)


def test_sform_against_stale_pixdim_warns(tmp_path, caplog):
    path = _write(tmp_path / "stale.nii.gz", sform=REAL, scode=2, qcode=0, zooms=(1.0, 1.0, 1.0))
    with caplog.at_level(logging.WARNING):
        g = geometry.decide(nib.load(path), path)
    assert g.source == "sform" and g.voxel_sizes == (3.0, 3.0, 3.0)
    (message,) = _messages(caplog)
    assert path in message and "pixdim" in message and "1 x 1 x 1 mm" in message


def test_tolerance_is_a_tenth_of_a_voxel(tmp_path, caplog):
    near, far = REAL.copy(), REAL.copy()
    near[0, 3] += 0.05 * 3.0  # 0.05 voxel: float round-off class, agrees
    far[0, 3] += 0.5 * 3.0  # half a voxel: disagrees
    a = _write(tmp_path / "near.nii.gz", sform=REAL, scode=1, qform=near, qcode=1)
    b = _write(tmp_path / "far.nii.gz", sform=REAL, scode=1, qform=far, qcode=1)
    with caplog.at_level(logging.WARNING):
        assert geometry.decide(nib.load(a), a).mismatch == ""
        assert "1.5 mm apart" in geometry.decide(nib.load(b), b).mismatch
    assert [b in m for m in _messages(caplog)] == [True]


def test_singular_transform_is_refused(tmp_path):
    flat = REAL.copy()
    flat[:, 2] = 0.0
    flat[3, 3] = 1.0
    path = _write(tmp_path / "flat.nii.gz", sform=flat, scode=1)
    with pytest.raises(geometry.GeometryError, match="not a usable"):
        geometry.decide(nib.load(path), path)


def test_monai_reader_uses_the_same_affine_where_the_stock_one_takes_the_qform(tmp_path):
    from monai.transforms import LoadImage

    path = _write(tmp_path / "quirky.nii.gz", sform=REAL, scode=1, qform=np.eye(4), qcode=1)
    stock = LoadImage(image_only=True)(path)
    ours = LoadImage(image_only=True, reader=geometry.NiftiReader())(path)
    assert stock.pixdim.tolist() == [1.0, 1.0, 1.0], "MONAI's own reader swaps in the qform (the fault this fixes)"
    np.testing.assert_allclose(ours.affine.numpy(), REAL)
    assert ours.pixdim.tolist() == [3.0, 3.0, 3.0]
    np.testing.assert_array_equal(ours.numpy(), np.asarray(nib.load(path).dataobj))
    two = LoadImage(image_only=True, reader=geometry.NiftiReader())([path, path])  # a list: stacked channels
    assert tuple(two.shape) == (2, *SHAPE) and two.pixdim.tolist() == [3.0, 3.0, 3.0]


def test_written_files_hold_one_geometry_whatever_the_reference_header(tmp_path):
    quirky = nib.load(_write(tmp_path / "quirky.nii.gz", sform=REAL, scode=1, qform=np.eye(4), qcode=1))
    out = tmp_path / "out.nii.gz"
    save_nifti(np.zeros(SHAPE, np.uint8), quirky.affine, out, header=quirky.header)
    written = nib.load(out)
    assert int(written.header["sform_code"]) == 1 and int(written.header["qform_code"]) == 1
    np.testing.assert_allclose(written.get_sform(), REAL)
    np.testing.assert_allclose(written.get_qform(), REAL, atol=1e-5)
    assert written.header.get_zooms() == (3.0, 3.0, 3.0) and written.get_data_dtype() == np.uint8
    sheared = REAL.copy()
    sheared[0, 1] = 0.5  # no quaternion can hold a shear: the qform is switched off, the sform carries it
    save_nifti(np.zeros(SHAPE, np.uint8), sheared, out, header=quirky.header)
    written = nib.load(out)
    assert int(written.header["qform_code"]) == 0 and geometry.decide(written, out).mismatch == ""
    np.testing.assert_allclose(written.affine, sheared)
