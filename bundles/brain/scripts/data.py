"""The BraTS 2021 layout reader: case lists, the seeded train/validation split, and the dataset check.

Layout (DESIGN.md): ``D/BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz``. Every case folder under
``D`` is a case; the four sequences are stacked as channels in the fixed order :data:`SEQUENCES`. BraTS has no split
in its layout, so training holds out a seeded validation part (``<output_dir>/splits.json``, re-read when present), and
evaluation uses every case, unless a Decathlon-style datalist JSON names the split.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.validation import Problems, check_dir, check_file, check_finite, check_labels

logger = logging.getLogger(__name__)

SEQUENCES = ("t1", "t1ce", "t2", "flair")
LABELS = (0, 1, 2, 4)


def case_dirs(dataset_dir: str | os.PathLike) -> list[Path]:
    """The case folders of a BraTS-layout folder, sorted by name (hidden folders are skipped)."""
    root = Path(str(dataset_dir))
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def case_item(case_dir: str | os.PathLike, with_label: bool = True) -> dict[str, Any]:
    """The datalist entry of one case: ``{"case", "image": [4 paths], "label"}`` (label only ``with_label``)."""
    case_dir = Path(str(case_dir))
    cid = case_dir.name
    item: dict[str, Any] = {"case": cid, "image": [str(case_dir / f"{cid}_{s}.nii.gz") for s in SEQUENCES]}
    if with_label:
        item["label"] = str(case_dir / f"{cid}_seg.nii.gz")
    return item


def _check_case(item: dict[str, Any], problems: Problems, check_voxels: bool) -> None:
    """Record every problem of one case: missing/unreadable files, geometry mismatch, NaN, bad label values."""
    from common.geometry import GeometryError, load

    paths = list(item["image"]) + ([item["label"]] if "label" in item else [])
    reference = None
    for path in paths:
        what = "label map" if path == item.get("label") else f"sequence {Path(path).name[len(item['case']) + 1:]}"
        if not check_file(path, problems, f"{item['case']}: {what}"):
            continue
        try:
            img = load(path)  # the one geometry of common.geometry (sform first), as every later step uses
            data = np.asanyarray(img.dataobj) if check_voxels else None
        except GeometryError as e:
            problems.add(path, f"{item['case']}: {what}: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - any reader error is reported with the file
            problems.add(path, f"{item['case']}: {what} is not a readable NIfTI file ({type(e).__name__}: {e})")
            continue
        if len(img.shape) != 3:
            problems.add(path, f"{item['case']}: {what} must be a 3D volume, got shape {img.shape}")
            continue
        if reference is None:
            reference = (path, img.shape, img.affine)
        elif img.shape != reference[1]:
            problems.add(path, f"{item['case']}: shape {img.shape} differs from "
                               f"{Path(reference[0]).name} {reference[1]}")
        elif not np.allclose(img.affine, reference[2], atol=1e-3):
            problems.add(path, f"{item['case']}: affine differs from {Path(reference[0]).name}'s")
        if data is None:
            continue
        if path == item.get("label"):
            check_labels(data, LABELS, f"{path}: {item['case']}", problems)
        else:
            check_finite(data, f"{path}: {item['case']}", problems)


def validate_items(items: list[dict[str, Any]], subject: str, check_voxels: bool = True) -> None:
    """Check every case of a datalist and raise one :class:`common.validation.DatasetError` listing all problems."""
    problems = Problems(subject)
    if not items:
        problems.add(subject, "no cases found (expected BraTS case folders <case>/<case>_{t1,t1ce,t2,flair}.nii.gz)")
    for item in items:
        _check_case(item, problems, check_voxels)
    problems.raise_if_any()


def load_cases(dataset_dir: str | os.PathLike, with_label: bool = True, override: str = "--dataset_dir",
               validate: bool = True) -> list[dict[str, Any]]:
    """Every case under ``dataset_dir``, checked before any compute is spent.

    Raises:
        common.validation.DatasetError: the folder is missing or empty, or any case has a problem (all listed).
    """
    dataset_dir = str(dataset_dir)
    problems = Problems(f"brain dataset {dataset_dir}")
    if check_dir(dataset_dir, problems, "dataset folder", override):
        items = [case_item(d, with_label) for d in case_dirs(dataset_dir)]
    else:
        items = []
    problems.raise_if_any()
    if validate:
        validate_items(items, f"brain dataset {dataset_dir}")
    return items


def _from_datalist(datalist: str, key: str, dataset_dir: str) -> list[dict[str, Any]]:
    from monai.data import load_decathlon_datalist

    items = load_decathlon_datalist(str(datalist), is_segmentation=True, data_list_key=key, base_dir=dataset_dir)
    for item in items:
        first = item["image"][0] if isinstance(item["image"], list) else item["image"]
        item.setdefault("case", Path(first).parent.name)
    return items


def training_split(dataset_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None,
                   val_fraction: float = 0.2, seed: int = 0, datalist: str | None = None,
                   synthetic: dict[str, Any] | None = None) -> dict[str, list]:
    """The checked ``{"train": [...], "validation": [...]}`` datalists for training.

    With ``datalist`` (a Decathlon-style JSON with ``training`` and ``validation`` keys) the split is read from it;
    otherwise a seeded ``val_fraction`` of the cases (at least one, never all) is held out
    (:func:`common.splits.seeded_split`). The split (case ids) is written to ``<output_dir>/splits.json`` and read
    back from there when present (:func:`common.splits.training_split`). ``synthetic`` (keyword arguments of
    :func:`prepare_synthetic`) generates the bundle's synthetic set first when ``dataset_dir`` is its default
    location and still empty.

    Raises:
        common.validation.DatasetError: bad data (every problem listed), a ``splits.json`` that does not match
            the data (the file named), or fewer than 2 cases (``common.splits.TooFewCasesError``: the folder, or the
            datalist, named with the counts found and needed).
    """
    from common.splits import select
    from common.splits import training_split as split_cases

    dataset_dir = str(dataset_dir)
    if synthetic:
        prepare_synthetic(dataset_dir, **synthetic)
    if datalist:
        train, val = (_from_datalist(datalist, "training", dataset_dir),
                      _from_datalist(datalist, "validation", dataset_dir))
        validate_items(train + val, f"brain datalist {datalist}")
        items = train + val
        given = {"train": [i["case"] for i in train], "validation": [i["case"] for i in val]}
    else:
        items, given = load_cases(dataset_dir), None
    ids = split_cases(output_dir, [i["case"] for i in items], val_fraction, seed, given=given,
                      source="datalist" if datalist else "seeded", dataset_dir=dataset_dir,
                      dataset=datalist or dataset_dir)
    return {"train": select(items, ids["train"]), "validation": select(items, ids["validation"])}


def evaluation_cases(dataset_dir: str | os.PathLike, datalist: str | None = None,
                     synthetic: dict[str, Any] | None = None,
                     output_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every case under ``dataset_dir`` (or the datalist's ``testing`` entries), checked; labels required.

    Each item also carries ``label_path``, so the evaluation can compare with the label file in its own grid. When
    ``<output_dir>/splits.json`` says the model was trained on some of these cases (same ``dataset_dir``), a warning
    names the file and the count (:func:`common.splits.trained_on`): such metrics are not held-out.
    """
    from common.splits import trained_on

    if synthetic:
        prepare_synthetic(str(dataset_dir), **synthetic)
    if datalist:
        items = _from_datalist(datalist, "testing", str(dataset_dir))
        validate_items(items, f"brain datalist {datalist}")
    else:
        items = load_cases(dataset_dir)
        trained_on(output_dir, dataset_dir, [i["case"] for i in items])
    return [{**item, "label_path": item["label"]} for item in items]


def prepare_synthetic(dataset_dir: str, synthetic_dir: str, num_cases: int = 24, seed: int = 0,
                      spacing: float = 3.0) -> None:
    """Write the synthetic set into ``dataset_dir`` on first use, only when it is the default ``synthetic_dir``
    (:func:`common.synthetic.ensure_synthetic`: one process writes, the others wait)."""
    from common.synthetic import ensure_synthetic

    from .phantom import write_dataset

    ensure_synthetic(dataset_dir, synthetic_dir,
                     lambda folder: write_dataset(folder, int(num_cases), int(seed), float(spacing)))
