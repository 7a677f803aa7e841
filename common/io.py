"""Atomic output: a file either appears whole or not at all.

Every writer goes to a temporary file in the target folder and then ``os.replace``s it (atomic on POSIX), so a
killed process, a full disk or a failed conversion leaves no half-written output behind.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class OutputError(OSError):
    """An output could not be written (permission, disk full, ...); the message names the file."""


def _default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on failure removed.

    The temporary name keeps ``path``'s suffixes (``.nii.gz``, ``.png``), so writers that choose a format by
    the file name still work.

    Raises:
        OutputError: the folder cannot be created or written (the message names the file and the reason).
    """
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, _default_file_mode())  # mkstemp creates 0600; give the file open()'s usual permissions
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically. NaN and infinities are refused (they are not JSON)."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[dict], fieldnames: Sequence[str] | None = None) -> None:
    """Write dict rows as CSV atomically; the columns are ``fieldnames`` or the keys in first-seen order."""
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(v) for k, v in row.items()})


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else f"{float(value):.6g}"
    return value


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, header: Any = None) -> None:
    """Save ``array`` as NIfTI with ``affine`` (and the reference ``header``'s units and codes) atomically.

    The file holds one geometry (``common.geometry``): sform and qform are both ``affine`` (the qform only where a
    quaternion represents it exactly, else its code is 0) and ``pixdim`` its voxel sizes, whatever disagreement the
    reference ``header`` carried, so every reader (nibabel, MONAI, ITK) sees the same grid.
    """
    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(np.asarray(array), affine, header=header)
    if header is not None:
        image.set_data_dtype(np.asarray(array).dtype)
    sform_code, qform_code = int(image.header["sform_code"]) or 2, int(image.header["qform_code"])
    image.set_sform(affine, code=sform_code)
    image.set_qform(affine, code=qform_code)
    if qform_code and not np.allclose(image.get_qform(), affine, atol=1e-4):
        image.set_qform(affine, code=0)  # a sheared affine: the sform alone carries it
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


def save_png(array: np.ndarray, path: str | os.PathLike, text: dict[str, str] | None = None) -> None:
    """Save a 2D uint8 (or HxWx3 uint8) array as PNG atomically; ``text`` entries go into the PNG's tEXt chunks
    (Pillow reads them back as ``Image.open(path).text``)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = None
    if text:
        info = PngInfo()
        for key, value in text.items():
            info.add_text(str(key), str(value))
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(array)).save(tmp, format="PNG", pnginfo=info)


def save_figure(fig: Any, path: str | os.PathLike, dpi: float | None = None) -> str:
    """Write a matplotlib figure as PNG atomically (see :func:`atomic_path`), then close it if pyplot manages it.

    Returns:
        ``path`` as a string.
    """
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **({"dpi": dpi} if dpi is not None else {}))
    plt.close(fig)
    return str(path)
