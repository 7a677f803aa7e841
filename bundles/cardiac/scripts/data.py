"""The ACDC 2017 layout: ``D/{training,testing}/patientNNN/{Info.cfg, patientNNN_frameXX[_gt].nii.gz}``.

Reads ``Info.cfg`` (ED/ES frame numbers), lists the ED and ES frames of every patient, checks the whole split before
any compute is spent (every problem reported at once, naming patient and file), and builds the data lists of the
train / validate / evaluate workflows: one item per (patient, phase), ED before ES, patients in order; the
training/validation split is by patient (:mod:`common.splits`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from common.geometry import GeometryError, load, voxel_sizes
from common.validation import Problems, check_dir, check_file, check_finite, check_labels

logger = logging.getLogger(__name__)
PHASES = ("ED", "ES")


def parse_info_cfg(path: str | Path) -> dict[str, Any]:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines) into a dict; ``ED``, ``ES``, ``NbFrame`` become ints.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a line is not ``Key: value``, ED or ES is missing, or a frame number is not a positive integer.
    """
    path = Path(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Info.cfg is missing")
    info: dict[str, Any] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"{path}: line {number} is not 'Key: value': {line!r}")
        info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if key not in info:
            raise ValueError(f"{path}: no '{key}:' frame number")
    for key in ("ED", "ES", "NbFrame"):
        if key in info:
            try:
                info[key] = int(float(info[key]))
            except ValueError:
                raise ValueError(f"{path}: {key} must be an integer frame number, got {info[key]!r}") from None
            if info[key] < 1:
                raise ValueError(f"{path}: {key} must be a positive frame number, got {info[key]}")
    return info


def frame_path(patient_dir: str | Path, frame: int, gt: bool = False) -> Path:
    """``<patient_dir>/<patient>_frameXX[_gt].nii.gz``."""
    patient_dir = Path(str(patient_dir))
    return patient_dir / f"{patient_dir.name}_frame{int(frame):02d}{'_gt' if gt else ''}.nii.gz"


def list_patients(folder: str | Path) -> list[Path]:
    """The patient folders (sub-folders) of ``folder``, sorted by name."""
    folder = Path(str(folder))
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []


def _load(path: Path, problems: Problems, what: str) -> nib.Nifti1Image | None:
    if not check_file(path, problems, what):
        return None
    try:
        image = load(path)  # the one geometry of common.geometry (sform first), as resampling and clinical.csv use
        image.get_fdata(dtype=np.float32)
        return image
    except GeometryError as e:
        problems.add(path, f"{what}: {e}")
        return None
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for damaged files
        problems.add(path, f"{what} cannot be read as NIfTI ({type(e).__name__}: {e})")
        return None


def _raw_zooms(image: nib.Nifti1Image, path: Path) -> tuple[float, ...]:
    """Voxel spacing as stored in the file (nibabel silently turns a stored 0 into 1 when loading)."""
    try:
        with nib.openers.ImageOpener(str(path)) as f:
            header = type(image.header).from_fileobj(f, check=False)
        return tuple(float(z) for z in header["pixdim"][1:4])
    except Exception:  # noqa: BLE001 - not a NIfTI-1/2 header: trust nibabel's reading
        return tuple(float(z) for z in image.header.get_zooms()[:3])


def _check_geometry(image: nib.Nifti1Image, path: Path, problems: Problems) -> bool:
    zooms = _raw_zooms(image, path)
    if image.ndim != 3:
        return problems.check(False, path, f"expected a 3D short-axis stack, got shape {image.shape}")
    return problems.check(len(zooms) >= 3 and all(np.isfinite(z) and z > 0 for z in zooms[:3]), path,
                          f"voxel spacing {zooms} (pixdim[1:4]) is zero, negative or missing")


def check_patient(patient_dir: Path, problems: Problems, need_labels: bool = True) -> list[dict[str, Any]]:
    """Check one patient folder; return its ED and ES items (empty when a problem was found)."""
    name, before = patient_dir.name, len(problems)
    try:
        info = parse_info_cfg(patient_dir / "Info.cfg")
    except (OSError, ValueError) as e:
        problems.add(patient_dir / "Info.cfg", f"patient {name}: {e}")
        return []
    items, shapes = [], {}
    for phase in PHASES:
        image_path = frame_path(patient_dir, info[phase])
        if not image_path.is_file():
            present = sorted(p.name for p in patient_dir.glob(f"{name}_frame*.nii.gz"))
            problems.add(image_path, f"patient {name}: {phase} frame {info[phase]} (Info.cfg) has no file; "
                                     f"frames present: {present}")
            continue
        image = _load(image_path, problems, f"{phase} image")
        if image is None or not _check_geometry(image, image_path, problems):
            continue
        check_finite(image.get_fdata(dtype=np.float32), image_path, problems)
        shapes[phase] = image.shape[:3]
        item = {"image": str(image_path), "patient": name, "phase": phase}
        if need_labels:
            label_path = frame_path(patient_dir, info[phase], gt=True)
            label = _load(label_path, problems, f"{phase} ground truth")
            if label is None or not _check_geometry(label, label_path, problems):
                continue
            check_labels(np.rint(label.get_fdata(dtype=np.float32)), range(4), label_path, problems)
            if label.shape[:3] != image.shape[:3]:
                problems.add(label_path, f"patient {name}: label shape {label.shape} differs from image "
                                         f"{image_path.name} shape {image.shape}")
            elif not np.allclose(voxel_sizes(label), voxel_sizes(image), rtol=1e-3, atol=1e-4):
                problems.add(label_path, f"patient {name}: label spacing {voxel_sizes(label)} differs "
                                         f"from image {image_path.name} spacing {voxel_sizes(image)}")
            item["label"] = str(label_path)
        items.append(item)
    if len(shapes) == 2 and shapes["ED"] != shapes["ES"]:
        problems.add(patient_dir, f"patient {name}: ED shape {shapes['ED']} differs from ES shape {shapes['ES']}")
    return items if len(problems) == before else []


def check_split(dataset_dir: str | Path, split: str, need_labels: bool = True) -> list[dict[str, Any]]:
    """Check every patient of ``<dataset_dir>/<split>``; return the items (ED, ES per patient, in order).

    Raises:
        DatasetError: listing every problem (patient and file) when any was found, or when the split is empty.
    """
    folder = Path(str(dataset_dir)) / split if split else Path(str(dataset_dir))
    problems = Problems(f"cardiac (ACDC) data {folder}")
    items: list[dict[str, Any]] = []
    if check_dir(folder, problems, f"the '{split or 'input'}' folder", override="--dataset_dir / --input_dir"):
        patients = list_patients(folder)
        problems.check(bool(patients), folder, "no patient folders (expected patientNNN/ with Info.cfg and frames)")
        for patient_dir in patients:
            items.extend(check_patient(patient_dir, problems, need_labels))
    problems.raise_if_any()
    return items


def prepare_synthetic(dataset_dir: str, synthetic_dir: str, num_cases: int = 30, seed: int = 0,
                      image_size: int = 128) -> None:
    """Write the synthetic ACDC set into ``dataset_dir`` on first use, only when it is the default ``synthetic_dir``
    (:func:`common.synthetic.ensure_synthetic`: one process writes, the others wait)."""
    from common.synthetic import ensure_synthetic

    from .phantom import write_dataset

    ensure_synthetic(dataset_dir, synthetic_dir, lambda folder: write_dataset(
        folder, num_cases=int(num_cases), seed=int(seed), image_size=int(image_size)))


def training_split(dataset_dir: str, output_dir: str | None = None, val_fraction: float = 0.2, seed: int = 0,
                   synthetic: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The checked ``{"train": [...], "validation": [...]}`` items of ``<dataset_dir>/training`` (ED and ES of every
    patient, patients in order) for training.

    ``synthetic`` (keyword arguments of :func:`prepare_synthetic`) generates the bundle's synthetic set first when
    ``dataset_dir`` is its default location and still empty. A seeded ``val_fraction`` of the patients (at least
    one, never all) is held out (:func:`common.splits.seeded_split`); the split (patient ids) is written to
    ``<output_dir>/splits.json`` and read back from there when present (:func:`common.splits.training_split`).

    Raises:
        DatasetError: the training split has problems (all listed), a ``splits.json`` that does not match the
            data (the file named), or fewer than 2 patients (``common.splits.TooFewCasesError``: the ``training``
            folder named with the counts found and needed).
    """
    from common.splits import select
    from common.splits import training_split as split_cases

    if synthetic:
        prepare_synthetic(str(dataset_dir), **synthetic)
    items = check_split(str(dataset_dir), "training")
    patients = sorted({i["patient"] for i in items})
    ids = split_cases(output_dir, patients, val_fraction, seed, dataset_dir=dataset_dir, group_by="patient",
                      dataset=Path(str(dataset_dir)) / "training")
    return {part: select(items, ids[part], key="patient") for part in ("train", "validation")}


def evaluation_cases(dataset_dir: str, split: str = "testing",
                     synthetic: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The checked items of ``<dataset_dir>/<split>`` (ACDC ``testing``) for evaluation; ``synthetic`` as in
    :func:`training_split`.

    Raises:
        DatasetError: every problem of the split listed (patient and file).
    """
    if synthetic:
        prepare_synthetic(str(dataset_dir), **synthetic)
    return check_split(str(dataset_dir), split)
