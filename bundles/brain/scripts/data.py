"""The BraTS 2021 layout reader: case lists, the seeded train/validation split, and the dataset check.

Layout (DESIGN.md): ``D/BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz``. Every case folder under
``D`` is a case; the four sequences are stacked as channels in the fixed order :data:`SEQUENCES`. BraTS has no split
in its layout, so training holds out a seeded validation part (written to ``<output_dir>/splits.json``), and
evaluation uses every case, unless a Decathlon-style datalist JSON names the split.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.io import write_json
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
    otherwise a seeded ``val_fraction`` of the cases (at least one) is held out. The split (case ids) is written to
    ``<output_dir>/splits.json``. ``synthetic`` (keyword arguments of :func:`prepare_synthetic`) generates the
    bundle's synthetic set first when ``dataset_dir`` is its default location and still empty.

    Raises:
        common.validation.DatasetError: bad data (every problem listed); ValueError: fewer than 2 cases.
    """
    dataset_dir = str(dataset_dir)
    if synthetic:
        prepare_synthetic(dataset_dir, **synthetic)
    if datalist:
        train, val = (_from_datalist(datalist, "training", dataset_dir),
                      _from_datalist(datalist, "validation", dataset_dir))
        validate_items(train + val, f"brain datalist {datalist}")
    else:
        items = load_cases(dataset_dir)
        if len(items) < 2:
            raise ValueError(f"brain dataset {dataset_dir}: {len(items)} case(s); training needs at least 2 "
                             f"(one is held out for validation).")
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}.")
        order = np.random.default_rng(int(seed)).permutation(len(items))
        n_val = max(1, int(round(len(items) * float(val_fraction))))
        val = [items[i] for i in sorted(order[:n_val])]
        train = [items[i] for i in sorted(order[n_val:])]
    if output_dir is not None and _is_rank0():
        write_json(Path(str(output_dir)) / "splits.json",
                   {"dataset_dir": dataset_dir, "seed": int(seed), "train": [i["case"] for i in train],
                    "validation": [i["case"] for i in val]})
    logger.info("brain split: %d training, %d validation cases", len(train), len(val))
    return {"train": train, "validation": val}


def evaluation_cases(dataset_dir: str | os.PathLike, datalist: str | None = None,
                     synthetic: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every case under ``dataset_dir`` (or the datalist's ``testing`` entries), checked; labels required.

    Each item also carries ``label_path``, so the evaluation can compare with the label file in its own grid.
    """
    if synthetic:
        prepare_synthetic(str(dataset_dir), **synthetic)
    if datalist:
        items = _from_datalist(datalist, "testing", str(dataset_dir))
        validate_items(items, f"brain datalist {datalist}")
    else:
        items = load_cases(dataset_dir)
    return [{**item, "label_path": item["label"]} for item in items]


def prepare_synthetic(dataset_dir: str, default_dir: str, num_cases: int = 24, seed: int = 0,
                      spacing: float = 3.0) -> None:
    """Write the synthetic set into ``dataset_dir`` on first use, only when it is the default ``default_dir``.

    In a distributed run rank 0 writes and the other ranks wait for it.
    """
    from common.distributed import barrier

    from .phantom import ensure_dataset

    if _is_rank0():
        ensure_dataset(dataset_dir, default_dir, int(num_cases), int(seed), float(spacing))
    barrier()


def _is_rank0() -> bool:
    from common.distributed import is_rank0

    return is_rank0()
