"""One geometry per NIfTI file: which of the header's transforms is the truth, decided once, used everywhere.

A NIfTI-1/2 header can carry two voxel-to-world transforms, the *sform* (``srow_x/y/z``, ``sform_code``) and the
*qform* (quaternion + ``pixdim``, ``qform_code``), and some conversion tools write two that disagree (e.g. the qform
left at identity with code 1 and the real 3 mm sform with code 1). Libraries then differ: nibabel's ``img.affine``
takes the sform, while MONAI's ``NibabelReader`` (through ``monai.data.utils.correct_nifti_header_if_necessary``)
replaces the sform by the qform whenever ``pixdim`` matches the qform but not the sform. A bundle that checks and
writes with nibabel but resamples and measures with MONAI then predicts in one geometry and writes in another, a
silently wrong result.

The rule (the same as nibabel's ``Nifti1Header.get_best_affine`` and the NIfTI-1 standard's preference):

1. the **sform** when ``sform_code > 0``;
2. else the **qform** when ``qform_code > 0``;
3. else the fall-back affine from ``pixdim`` alone (nibabel's ``get_base_affine``).

Every 3D bundle (brain, cardiac) reads NIfTI through :func:`load` (checks, metrics, writers) and through
:class:`NiftiReader` (MONAI's ``LoadImage(d)``: resampling, network input, inversion), so checking, resampling, the
network input, voxel volumes, HD95 in mm and the written output all use the chosen affine; voxel sizes come from that
affine (:func:`voxel_sizes`), never from ``pixdim``. When the header declares geometries that disagree (both codes set
and the two transforms place a corner of the volume more than ``tolerance`` voxels apart, or the chosen sform's voxel
sizes differ from ``pixdim``), a warning names the file and both voxel sizes, once per file and process; with
``on_mismatch="error"`` such a file is refused with :class:`GeometryError` instead. Files written by
``common.io.save_nifti`` carry one geometry (sform and qform equal), so every output reads back the same in every tool.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.data import NibabelReader

logger = logging.getLogger(__name__)

TOLERANCE_VOXELS = 0.1
"""Two transforms agree when no corner of the voxel grid lies more than this fraction of the smallest voxel apart."""

_warned: set[str] = set()


class GeometryError(ValueError):
    """A NIfTI header's transforms disagree (``on_mismatch="error"``) or the chosen one is unusable (singular)."""


@dataclass(frozen=True)
class Geometry:
    """The geometry decided for one file.

    Attributes:
        path: the file.
        affine: the chosen 4x4 voxel-to-world (RAS+ mm) matrix, float64.
        source: ``"sform"``, ``"qform"`` or ``"pixdim"`` (the fall-back).
        code: the NIfTI code of the chosen transform (0 for the fall-back).
        voxel_sizes: voxel size in mm along each array axis, from ``affine``.
        mismatch: the warning text when the header's transforms disagree, else ``""``.
    """

    path: str
    affine: np.ndarray
    source: str
    code: int
    voxel_sizes: tuple[float, float, float]
    mismatch: str = ""


def _sizes(affine: np.ndarray) -> tuple[float, float, float]:
    import nibabel as nib

    return tuple(float(v) for v in nib.affines.voxel_sizes(np.asarray(affine, dtype=np.float64))[:3])  # type: ignore


def _fmt(sizes: Sequence[float]) -> str:
    return " x ".join(f"{float(s):.4g}" for s in sizes) + " mm"


def _corner_distance(a: np.ndarray, b: np.ndarray, shape: Sequence[int]) -> float:
    """Largest distance (mm) between the world positions that ``a`` and ``b`` give the corners of the grid."""
    n = [max(int(s) - 1, 0) for s in (list(shape) + [1, 1, 1])[:3]]
    corners = np.array([[i, j, k, 1.0] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])]).T
    return float(np.max(np.linalg.norm((a @ corners - b @ corners)[:3], axis=0)))


def decide(image: Any, path: str | os.PathLike, tolerance: float = TOLERANCE_VOXELS,
           on_mismatch: str = "warn") -> Geometry:
    """Decide the geometry of one NIfTI image by the module's rule (sform, else qform, else pixdim).

    Args:
        image: a loaded ``nibabel`` NIfTI-1/2 image (its header is read, not changed).
        path: the file it came from (named in warnings and errors).
        tolerance: disagreement threshold, in voxels of the smallest chosen voxel size.
        on_mismatch: ``"warn"`` (log a warning naming the file, once per file and process) or ``"error"``.

    Returns:
        the :class:`Geometry`.

    Raises:
        GeometryError: the chosen affine is singular or not finite; or the transforms disagree and
            ``on_mismatch="error"``. The message names the file and both voxel sizes.
        ValueError: ``on_mismatch`` is not ``"warn"`` or ``"error"``.
    """
    if on_mismatch not in ("warn", "error"):
        raise ValueError(f"on_mismatch must be 'warn' or 'error', got {on_mismatch!r}.")
    path = str(path)
    header = image.header
    shape = tuple(int(s) for s in image.shape[:3])
    if "sform_code" not in header or "qform_code" not in header:  # not a NIfTI header (e.g. MGH): one transform only
        affine = np.array(image.affine, dtype=np.float64)
        return Geometry(path, affine, "affine", 0, _sizes(affine))
    scode, qcode = int(header["sform_code"]), int(header["qform_code"])
    sform, qform = np.array(header.get_sform(), dtype=np.float64), np.array(header.get_qform(), dtype=np.float64)
    if scode > 0:
        source, code, affine = "sform", scode, sform
    elif qcode > 0:
        source, code, affine = "qform", qcode, qform
    else:
        source, code, affine = "pixdim", 0, np.array(header.get_base_affine(), dtype=np.float64)
    sizes = _sizes(affine)
    if not np.isfinite(affine).all() or abs(float(np.linalg.det(affine[:3, :3]))) < 1e-12:
        raise GeometryError(f"{path}: the NIfTI {source} (code {code}) is not a usable voxel-to-world transform "
                            f"(voxel size {_fmt(sizes)}); fix the file's header")
    limit = float(tolerance) * min(sizes)
    mismatch = ""
    if scode > 0 and qcode > 0 and _corner_distance(sform, qform, shape) > limit:
        mismatch = (f"the header's sform (code {scode}, voxel size {_fmt(sizes)}) and qform (code {qcode}, voxel size "
                    f"{_fmt(_sizes(qform))}) disagree (a corner of the volume "
                    f"{_corner_distance(sform, qform, shape):.3g} mm apart)")
    elif source == "sform":
        zooms = tuple(float(z) for z in header.get_zooms()[:3])
        if len(zooms) == 3 and not np.allclose(zooms, sizes, rtol=1e-3, atol=1e-4):
            mismatch = (f"the header's sform (code {scode}, voxel size {_fmt(sizes)}) disagrees with its pixdim "
                        f"(voxel size {_fmt(zooms)})")
    if mismatch:
        if on_mismatch == "error":
            raise GeometryError(f"{path}: {mismatch}; refusing an ambiguous geometry: fix the header (set the qform "
                                f"equal to the sform, or the sform_code to 0 if the qform is right)")
        if path not in _warned:
            _warned.add(path)
            logger.warning("%s: %s; using the %s (sform first, then qform: nibabel's rule) for checking, resampling, "
                           "metrics and the written output. Fix the header if the other transform is the true "
                           "geometry.", path, mismatch, source)
    return Geometry(path, affine, source, code, sizes, mismatch)


def harmonised(image: Any, geometry: Geometry) -> Any:
    """A copy of ``image`` (same voxel data, lazily read) whose header holds one geometry: sform and qform both
    ``geometry.affine`` (the qform only where a quaternion can represent it exactly) and ``pixdim`` its voxel sizes.
    Any reader then (MONAI's, ITK's, nibabel's) gets the chosen affine."""
    if "sform_code" not in image.header:
        return image
    header = image.header.copy()
    code = geometry.code or 1
    header.set_sform(geometry.affine, code=code)
    header.set_qform(geometry.affine, code=code)
    if not np.allclose(header.get_qform(), geometry.affine, atol=1e-4 * max(geometry.voxel_sizes)):
        header.set_qform(geometry.affine, code=0)  # sheared: a quaternion cannot hold it; the sform rules alone
    header.set_zooms(tuple(geometry.voxel_sizes) + tuple(header.get_zooms()[3:]))
    return type(image)(image.dataobj, geometry.affine, header)


def load(path: str | os.PathLike, tolerance: float = TOLERANCE_VOXELS, on_mismatch: str = "warn") -> Any:
    """Load a NIfTI file with ``nibabel`` and give it the one geometry of the rule (see :func:`decide`).

    Returns:
        a ``nibabel`` image whose ``affine``, sform, qform and ``header.get_zooms()`` are all the chosen geometry
        (voxel data read lazily, as ``nibabel.load``).

    Raises:
        GeometryError: see :func:`decide`. nibabel's own errors for unreadable files propagate unchanged.
    """
    import nibabel as nib

    image = nib.load(str(path))
    return harmonised(image, decide(image, path, tolerance, on_mismatch))


def voxel_sizes(image: Any) -> tuple[float, float, float]:
    """Voxel size (mm) along each array axis from the image's affine (use on images from :func:`load`)."""
    return _sizes(np.asarray(image.affine))


class NiftiReader(NibabelReader):
    """MONAI's ``NibabelReader`` reading every file through :func:`load`, for ``LoadImage(d)(reader=...)``.

    The stock reader runs ``correct_nifti_header_if_necessary``, which may swap the sform for the qform; this one
    hands MONAI the affine of the module's rule, so ``Spacing``, ``Orientation``, ``Invertd`` and ``MetaTensor.pixdim``
    see the same geometry as the bundles' checks, metrics and writers. Arguments are ``NibabelReader``'s, plus
    ``tolerance`` and ``on_mismatch`` (see :func:`decide`).
    """

    def __init__(self, *args: Any, tolerance: float = TOLERANCE_VOXELS, on_mismatch: str = "warn",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tolerance, self.on_mismatch = float(tolerance), str(on_mismatch)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Read one file or a list of files (stacked as channels by ``get_data``); see :func:`load`."""
        import nibabel as nib
        from monai.utils import ensure_tuple

        filenames = ensure_tuple(data)
        self.filenames = filenames
        images = []
        for name in filenames:
            image = nib.load(str(name), **{**self.kwargs, **kwargs})
            images.append(harmonised(image, decide(image, name, self.tolerance, self.on_mismatch)))
        return images if len(filenames) > 1 else images[0]
