"""The CBIS-DDSM mass layout: CSV parsing, path resolution, dataset validation and the train/val/test datalists.

Path rule (DESIGN.md): every CSV cell is stripped (real cells may end in a newline); a path that does not exist
under ``dataset_dir`` is looked up through its case folder name (the first path component, e.g.
``Mass-Training_P_00001_LEFT_CC_1``) anywhere under ``dataset_dir``, as TCIA's download tree renames the folders and
files below it; a row that cannot be resolved is reported with its CSV line.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from common.io import write_json
from common.validation import Problems, check_dir
from scripts.dicom import DicomError, read_header, require_decoder

logger = logging.getLogger(__name__)

PATHOLOGY = {"MALIGNANT": 1, "BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0}
ID_COLUMNS = ("patient_id", "left or right breast", "image view", "abnormality id")
PATH_COLUMNS = {"cropped": ("cropped image file path",), "roi_mask": ("image file path", "ROI mask file path")}
KEYWORDS = {"image file path": "full mammogram", "cropped image file path": "cropped",
            "ROI mask file path": "mask"}
PREFIX = {"train": "Mass-Training", "test": "Mass-Test"}


def csv_path(dataset_dir: str | os.PathLike, split: str) -> Path:
    """``<dataset_dir>/mass_case_description_<split>_set.csv``."""
    if split not in PREFIX:
        raise ValueError(f"split must be one of {list(PREFIX)}, got {split!r}.")
    return Path(str(dataset_dir)) / f"mass_case_description_{split}_set.csv"


def read_rows(path: Path, problems: Problems, columns: Sequence[str]) -> list[dict[str, str]]:
    """CSV rows with stripped header and cells (``breast density`` is renamed ``breast_density``).

    Records a problem (naming the file) when it is missing, unreadable or lacks one of ``columns``.
    """
    if not path.is_file():
        problems.add(path, "CSV file is missing (set --dataset_dir to the CBIS-DDSM folder)")
        return []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            table = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        problems.add(path, f"CSV file is not readable: {e}")
        return []
    if not table:
        problems.add(path, "CSV file is empty")
        return []
    header = [h.strip().replace("breast density", "breast_density") for h in table[0]]
    missing = [c for c in columns if c not in header]
    if missing:
        problems.add(path, f"CSV lacks required column(s) {missing} (has {header})")
        return []
    return [{h: (cell.strip() if i < len(cells) else "") for i, (h, cell) in enumerate(zip(header, cells))}
            for cells in table[1:] if any(c.strip() for c in cells)]


@lru_cache(maxsize=8)
def _folder_index(root: str) -> dict[str, list[str]]:
    """Folder name -> the folders of that name under ``root`` (for resolving renamed TCIA trees)."""
    index: dict[str, list[str]] = {}
    for here, dirs, _ in os.walk(root):
        for d in dirs:
            index.setdefault(d, []).append(os.path.join(here, d))
    return index


def resolve(dataset_dir: Path, cell: str, column: str) -> tuple[Path | None, str]:
    """Resolve a CSV path cell; returns ``(path, "")`` or ``(None, reason)``."""
    cell = cell.strip().replace("\\", "/")
    if not cell:
        return None, f"'{column}' is empty"
    direct = dataset_dir / cell
    if direct.is_file():
        return direct, ""
    folder = cell.split("/")[0]
    found = [Path(p) for d in _folder_index(str(dataset_dir)).get(folder, []) for p in sorted(Path(d).rglob("*.dcm"))]
    if len(found) == 1:
        return found[0], ""
    if not found:
        return None, f"'{column}' {cell} does not exist and no case folder {folder} with a .dcm file is under {dataset_dir}"
    keyword = KEYWORDS.get(column, "")
    by_kind = [p for p in found if keyword and keyword.lower() in str(p.relative_to(dataset_dir)).lower()]
    if len(by_kind) == 1:
        return by_kind[0], ""
    by_name = [p for p in found if p.name == Path(cell).name]
    if len(by_name) == 1:
        return by_name[0], ""
    return None, f"'{column}' {cell} does not exist and case folder {folder} holds {len(found)} ambiguous .dcm files"


def check_dicom(path: Path, problems: Problems, where: str) -> tuple[int, int] | None:
    """Check a DICOM header (pixel data present, greyscale, decodable transfer syntax); return (rows, columns)."""
    try:
        ds = read_header(path)
    except DicomError as e:
        problems.add(where, str(e))
        return None
    try:
        require_decoder(ds, path)  # the same check and words as inference (scripts.dicom.read_dicom)
    except DicomError as e:
        problems.add(where, str(e))
        return None
    return int(ds.Rows), int(ds.Columns)


def case_id(row: dict[str, str], split: str) -> str:
    """CBIS-DDSM's ROI folder name, e.g. ``Mass-Training_P_00001_LEFT_CC_1``."""
    return (f"{PREFIX[split]}_{row['patient_id']}_{row['left or right breast'].upper()}_"
            f"{row['image view'].upper()}_{row['abnormality id']}")


def load_split(dataset_dir: str | os.PathLike, split: str, crop_source: str = "cropped",
               problems: Problems | None = None, check_files: bool = True, need_labels: bool = True) -> list[dict]:
    """Items ``{"case", "patient", "label", "image" | ("full", "roi")}`` of one split's CSV.

    Every problem (missing columns, unknown ``pathology``, unresolvable or unreadable files, duplicate cases, ROI
    mask and full image of different sizes) is recorded in ``problems`` naming the CSV line and the file; with
    ``problems=None`` they are raised at once as :class:`common.validation.DatasetError`.
    """
    if crop_source not in PATH_COLUMNS:
        raise ValueError(f"crop_source must be one of {list(PATH_COLUMNS)}, got {crop_source!r}.")
    own = problems is None
    problems = Problems(f"CBIS-DDSM mass dataset {dataset_dir}") if own else problems
    root, path = Path(str(dataset_dir)), csv_path(dataset_dir, split)
    columns = ID_COLUMNS + (("pathology",) if need_labels else ()) + PATH_COLUMNS[crop_source]
    items, seen = [], set()
    for line, row in enumerate(read_rows(path, problems, columns), start=2):
        where = f"{path.name} line {line}"
        case = case_id(row, split)
        if case in seen:
            problems.add(where, f"duplicate case {case}")
        seen.add(case)
        item: dict[str, Any] = {"case": case, "patient": row["patient_id"]}
        if need_labels:
            if row["pathology"].upper() not in PATHOLOGY:
                problems.add(where, f"unknown pathology {row['pathology']!r} (expected one of {list(PATHOLOGY)})")
                continue
            item["label"] = PATHOLOGY[row["pathology"].upper()]
        sizes = []
        for column in PATH_COLUMNS[crop_source]:
            resolved, reason = resolve(root, row[column], column)
            if resolved is None:
                problems.add(where, f"case {case}: {reason}")
                continue
            item[{"cropped image file path": "image", "image file path": "full"}.get(column, "roi")] = str(resolved)
            sizes.append(check_dicom(resolved, problems, f"{where} ({case})") if check_files else None)
        if len(sizes) == 2 and None not in sizes and sizes[0] != sizes[1]:
            problems.add(where, f"case {case}: full image {sizes[0]} and ROI mask {sizes[1]} differ in size")
        items.append(item)
    if problems.check(bool(items) or not path.is_file(), path, "split has no cases") and own:
        problems.raise_if_any()
    return items


def split_train_val(items: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded hold-out by patient (a patient's CC and MLO views stay together), stratified by label."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    rng = np.random.default_rng(int(seed))
    by_patient: dict[str, list[dict]] = {}
    for item in items:
        by_patient.setdefault(item["patient"], []).append(item)
    val_patients: set[str] = set()
    for label in (0, 1):
        group = sorted(p for p, its in by_patient.items() if max(i.get("label", 0) for i in its) == label)
        rng.shuffle(group)
        wanted, taken = val_fraction * sum(len(by_patient[p]) for p in group), 0
        for patient in group:
            if taken >= wanted - 0.5 or len(val_patients) >= len(by_patient) - 1:
                break
            val_patients.add(patient)
            taken += len(by_patient[patient])
    if not val_patients and len(by_patient) > 1:
        val_patients.add(sorted(by_patient)[0])
    train = [i for i in items if i["patient"] not in val_patients]
    val = [i for i in items if i["patient"] in val_patients]
    return train, val


def datalist(dataset_dir: str | os.PathLike, part: str, crop_source: str = "cropped", val_fraction: float = 0.2,
             seed: int = 0) -> list[dict]:
    """Items of ``part``: ``train``/``val`` (seeded split of the train CSV) or ``test`` (the test CSV)."""
    if part == "test":
        return load_split(dataset_dir, "test", crop_source, check_files=False)
    if part not in ("train", "val"):
        raise ValueError(f"part must be 'train', 'val' or 'test', got {part!r}.")
    train, val = split_train_val(load_split(dataset_dir, "train", crop_source, check_files=False), val_fraction, seed)
    return train if part == "train" else val


def validate(dataset_dir: str | os.PathLike, splits: Sequence[str] = ("train",), crop_source: str = "cropped",
             output_dir: str | os.PathLike | None = None, val_fraction: float = 0.2, seed: int = 0) -> None:
    """Check the dataset before any compute and report every problem at once; write ``splits.json`` for training.

    Raises:
        common.validation.DatasetError: listing every problem, each naming its CSV line, case and file.
    """
    problems = Problems(f"CBIS-DDSM mass dataset {dataset_dir}")
    if check_dir(str(dataset_dir), problems, "dataset folder", override="--dataset_dir"):
        _folder_index.cache_clear()
        loaded = {split: load_split(dataset_dir, split, crop_source, problems) for split in splits}
    problems.raise_if_any()
    for split, items in loaded.items():
        labels = {i["label"] for i in items}
        if len(labels) < 2:
            logger.warning("%s split has only class(es) %s: AUC is undefined", split, sorted(labels))
    if output_dir is not None and "train" in loaded:
        train, val = split_train_val(loaded["train"], val_fraction, seed)
        if not train or not val:
            raise ValueError(f"{csv_path(dataset_dir, 'train')}: too few patients for a train/val split "
                             f"({len(train)} train, {len(val)} val masses).")
        write_json(Path(str(output_dir)) / "splits.json", {"seed": int(seed), "val_fraction": float(val_fraction),
                                                           "train": [i["case"] for i in train],
                                                           "val": [i["case"] for i in val]})


def class_weights(dataset_dir: str | os.PathLike, weights: Any = "balanced", crop_source: str = "cropped",
                  val_fraction: float = 0.2, seed: int = 0) -> Any:
    """Cross-entropy class weights: ``"balanced"`` (n / (2 n_c) on the training part) or an explicit pair."""
    import torch

    if isinstance(weights, str):
        if weights != "balanced":
            raise ValueError(f"class_weights must be 'balanced' or [w_benign, w_malignant], got {weights!r}.")
        labels = np.array([i["label"] for i in datalist(dataset_dir, "train", crop_source, val_fraction, seed)])
        counts = np.maximum(np.bincount(labels, minlength=2), 1)
        weights = (labels.size / (2.0 * counts)).tolist()
    if len(weights) != 2 or min(weights) <= 0:
        raise ValueError(f"class_weights must hold two positive numbers, got {weights!r}.")
    return torch.tensor([float(w) for w in weights], dtype=torch.float32)


def require_checkpoint(path: str | os.PathLike) -> str:
    """Fail early with a clear message when the checkpoint to evaluate or infer with is missing."""
    if not Path(str(path)).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: train first (same --output_dir), or pass "
                                f"--ckpt_path to an existing model.pt.")
    return str(path)
