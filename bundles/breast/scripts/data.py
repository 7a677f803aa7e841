"""The CBIS-DDSM mass layout: CSV parsing, path resolution, dataset validation and the train/val/test datalists.

Path rule (DESIGN.md): every CSV cell is stripped (real cells may end in a newline); a path that does not exist
under ``dataset_dir`` is looked up through its case folder name (the first path component, e.g.
``Mass-Training_P_00001_LEFT_CC_1``) anywhere under ``dataset_dir``, as TCIA's download tree renames the folders and
files below it; a row that cannot be resolved is reported with its CSV line.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import as_bool
from common.validation import Problems, check_dir
from scripts.dicom import DicomError, check_decodable, read_dicom, read_header

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


#: What each CSV path column names, and the SeriesDescription TCIA gives that kind of file (CBIS-DDSM series names).
KIND_OF_COLUMN = {"image file path": "full", "cropped image file path": "cropped", "ROI mask file path": "mask"}
KIND_NAMES = {"full": "full mammogram", "cropped": "cropped image", "mask": "ROI mask", "grey": "grey-level image"}


def dicom_kind(path: Path) -> tuple[str, str]:
    """See :func:`_dicom_kind`; cached per file version (a split is loaded several times per run)."""
    try:
        stat = Path(path).stat()
    except OSError as e:
        return "unreadable", f"not readable ({e})"
    return _dicom_kind(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=65536)
def _dicom_kind(path: str, mtime_ns: int, size: int) -> tuple[str, str]:
    """What a CBIS-DDSM DICOM file is: ``("cropped" | "full" | "mask" | "grey" | "unreadable", how it was told)``.

    The header decides when its SeriesDescription says ``cropped images`` or ``full mammogram images``. A file
    labelled ``ROI mask images`` (or unlabelled) is told by its pixels: TCIA's one-series layout puts the cropped
    image *and* the mask into one ``ROI mask images`` series, so the label is not trusted there. Binary pixel values
    (at most two distinct values, as the 0/255 masks) make a ``"mask"``; more values make a ``"grey"`` image (a crop,
    or a full mammogram).
    """
    try:
        import pydicom

        description = str(pydicom.dcmread(str(path), stop_before_pixels=True).get("SeriesDescription", "")).lower()
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for a damaged file
        return "unreadable", f"not a readable DICOM file ({type(e).__name__}: {e})"
    if "crop" in description:
        return "cropped", f"SeriesDescription '{description}'"
    if "full" in description:
        return "full", f"SeriesDescription '{description}'"
    try:
        values = read_dicom(path)
    except DicomError as e:
        return "unreadable", str(e)
    low, high = float(values.min()), float(values.max())
    binary = not np.any((values != low) & (values != high))
    return ("mask" if binary else "grey"), ("binary" if binary else "grey-level") + " pixel values"


def _pick(found: list[Path], column: str, cell: str) -> tuple[Path | None, str]:
    """The one file of ``found`` (the .dcm files of a case folder) that ``column`` names, told apart by header and
    content (:func:`dicom_kind`); ``(None, reason)`` when none or several fit."""
    want = KIND_OF_COLUMN[column]
    accepted = {"cropped": ("cropped", "grey"), "full": ("full", "grey"), "mask": ("mask",)}[want]
    kinds: dict[Path, tuple[str, str]] = {}
    if want in ("cropped", "full"):  # a header that names the kind decides without reading any pixel
        import pydicom

        labelled = []
        for p in found:
            try:
                description = str(pydicom.dcmread(str(p), stop_before_pixels=True).get("SeriesDescription", ""))
            except Exception:  # noqa: BLE001 - reported below through dicom_kind
                continue
            if {"cropped": "crop", "full": "full"}[want] in description.lower():
                labelled.append(p)
        if len(labelled) == 1:
            return labelled[0], ""
    for p in found:
        kinds[p] = dicom_kind(p)
    fits = [p for p in found if kinds[p][0] in accepted]
    if len(fits) > 1:
        exact = [p for p in fits if kinds[p][0] == want] or [p for p in fits if p.name == Path(cell).name]
        fits = exact if len(exact) == 1 else fits
    if len(fits) == 1:
        return fits[0], ""
    seen = ", ".join(f"{p.name} ({KIND_NAMES.get(kinds[p][0], kinds[p][0])}: {kinds[p][1]})" for p in found)
    verdict = "none of its .dcm files is" if not fits else f"{len(fits)} of its .dcm files could each be"
    return None, f"{verdict} the {KIND_NAMES[want]}, told by header or content [{seen}]"


def resolve(dataset_dir: Path, cell: str, column: str) -> tuple[Path | None, str]:
    """Resolve a CSV path cell; returns ``(path, "")`` or ``(None, reason)``.

    A cell naming an existing file is taken as it is. Otherwise the ``.dcm`` files under the folder(s) named like
    the cell's first component (the case folder) are searched, and the one of the column's kind is chosen by
    :func:`dicom_kind` (SeriesDescription, else binary vs grey-level pixels): this resolves TCIA's renamed trees,
    both with crop and mask in two series and with both in one ``ROI mask images`` series (``1-1.dcm``,
    ``1-2.dcm``, in either order). A folder holding only the wrong kind (e.g. only the mask when the crop is asked
    for) is not resolved.
    """
    cell = cell.strip().replace("\\", "/")
    if not cell:
        return None, f"'{column}' is empty"
    direct = dataset_dir / cell
    if direct.is_file():
        return direct, ""
    folder = cell.split("/")[0]
    found = [Path(p) for d in _folder_index(str(dataset_dir)).get(folder, []) for p in sorted(Path(d).rglob("*.dcm"))]
    if not found:
        return None, (f"'{column}' {cell} does not exist and no case folder {folder} with a .dcm file is under "
                      f"{dataset_dir}")
    if column not in KIND_OF_COLUMN:
        return (found[0], "") if len(found) == 1 else (None, f"'{column}' {cell} does not exist and case folder "
                                                            f"{folder} holds {len(found)} .dcm files")
    picked, reason = _pick(found, column, cell)
    if picked is None:
        return None, f"'{column}' {cell} does not exist and in case folder {folder} {reason}"
    return picked, ""


@lru_cache(maxsize=65536)
def _checked_size(path: str, mtime_ns: int, size: int) -> tuple[tuple[int, int] | None, str]:
    """``((rows, columns), "")`` of a usable DICOM file, or ``(None, reason)``; cached per file version."""
    try:
        ds = read_header(path)
        check_decodable(ds, path)  # the same check and words as inference (scripts.dicom.read_dicom)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and syntax.is_compressed:
            read_dicom(path)  # decode once: damaged compressed data is reported here, not in the middle of training
    except DicomError as e:
        return None, str(e)
    return (int(ds.Rows), int(ds.Columns)), ""


def check_dicom(path: Path, problems: Problems, where: str) -> tuple[int, int] | None:
    """Check a DICOM file (readable, pixel data present, greyscale, decodable transfer syntax: compressed pixel data
    is decoded once); return (rows, columns), or None after recording the problem at ``where``."""
    try:
        stat = Path(path).stat()
    except OSError as e:
        problems.add(where, f"{path}: not readable ({e})")
        return None
    size, reason = _checked_size(str(path), stat.st_mtime_ns, stat.st_size)
    if size is None:
        problems.add(where, reason)
    return size


def case_id(row: dict[str, str], split: str) -> str:
    """CBIS-DDSM's ROI folder name, e.g. ``Mass-Training_P_00001_LEFT_CC_1``."""
    return (f"{PREFIX[split]}_{row['patient_id']}_{row['left or right breast'].upper()}_"
            f"{row['image view'].upper()}_{row['abnormality id']}")


_SKIPPED: dict[tuple[str, str, str], list[dict[str, str]]] = {}
_WARNED: set[tuple[str, str]] = set()


def load_split(dataset_dir: str | os.PathLike, split: str, crop_source: str = "cropped",
               problems: Problems | None = None, check_files: bool = True, need_labels: bool = True,
               strict_rows: bool | str = True) -> list[dict]:
    """Items ``{"case", "patient", "label", "image" | ("full", "roi")}`` of one split's CSV.

    Problems of the whole split (CSV missing, unreadable or lacking a column; no usable row) are recorded in
    ``problems``. Problems of one row (unknown ``pathology``, unresolvable or unreadable files, duplicate case, ROI
    mask and full image of different sizes) are, with ``strict_rows`` true, recorded in ``problems`` too, naming the
    CSV line, case and file; with ``strict_rows`` false the row is skipped with one warning naming the CSV line, case
    and reason (once per process), and listed by :func:`skipped_rows`. With ``problems=None`` the recorded problems
    are raised at once as :class:`common.validation.DatasetError`.
    """
    if crop_source not in PATH_COLUMNS:
        raise ValueError(f"crop_source must be one of {list(PATH_COLUMNS)}, got {crop_source!r}.")
    strict = as_bool(strict_rows, "strict_rows")
    own = problems is None
    problems = Problems(f"CBIS-DDSM mass dataset {dataset_dir}") if own else problems
    root, path = Path(str(dataset_dir)), csv_path(dataset_dir, split)
    columns = ID_COLUMNS + (("pathology",) if need_labels else ()) + PATH_COLUMNS[crop_source]
    items, seen, skipped = [], set(), []
    rows = read_rows(path, problems, columns)
    for line, row in enumerate(rows, start=2):
        where = f"{path.name} line {line}"
        case = case_id(row, split)
        row_problems = Problems(where)
        if case in seen:
            row_problems.add(where, f"duplicate case {case}")
        seen.add(case)
        item: dict[str, Any] = {"case": case, "patient": row["patient_id"]}
        if need_labels:
            if row["pathology"].upper() in PATHOLOGY:
                item["label"] = PATHOLOGY[row["pathology"].upper()]
            else:
                row_problems.add(where, f"unknown pathology {row['pathology']!r} (expected one of {list(PATHOLOGY)})")
        sizes = []
        for column in PATH_COLUMNS[crop_source] if "label" in item or not need_labels else ():
            resolved, reason = resolve(root, row[column], column)
            if resolved is None:
                row_problems.add(where, f"case {case}: {reason}")
                continue
            item[{"cropped image file path": "image", "image file path": "full"}.get(column, "roi")] = str(resolved)
            sizes.append(check_dicom(resolved, row_problems, f"{where} ({case})") if check_files else None)
        if len(sizes) == 2 and None not in sizes and sizes[0] != sizes[1]:
            row_problems.add(where, f"case {case}: full image {sizes[0]} and ROI mask {sizes[1]} differ in size")
        if not row_problems:
            items.append(item)
        elif strict:
            problems.items.extend(row_problems.items)
        else:
            reason = "; ".join(what for _, what in row_problems.items)
            skipped.append({"row": where, "case": case, "reason": reason})
            if (str(path), f"{where}: {reason}") not in _WARNED:
                _WARNED.add((str(path), f"{where}: {reason}"))
                logger.warning("%s (%s): row skipped (strict_rows is false): %s", where, case, reason)
    _SKIPPED[_skip_key(dataset_dir, split, crop_source)] = skipped
    if skipped:
        logger.warning("%s: %d of %d row(s) skipped (named above); %d mass(es) used. Set strict_rows true to stop "
                       "on such rows instead.", path, len(skipped), len(rows), len(items))
    if path.is_file() and not items:
        problems.add(path, f"split has no usable cases: all {len(skipped)} row(s) were skipped (named above)"
                     if skipped else "split has no cases")
    if own:
        problems.raise_if_any()
    return items


def _skip_key(dataset_dir: str | os.PathLike, split: str, crop_source: str) -> tuple[str, str, str]:
    return str(Path(str(dataset_dir)).resolve()), split, crop_source


def skipped_rows(dataset_dir: str | os.PathLike, split: str, crop_source: str = "cropped",
                 strict_rows: bool | str = False) -> list[dict[str, str]]:
    """The rows :func:`load_split` skipped (``{"row", "case", "reason"}``) in this process, loading the split if it
    was not loaded yet (so the count is right in any order of calls)."""
    key = _skip_key(dataset_dir, split, crop_source)
    if key not in _SKIPPED:
        load_split(dataset_dir, split, crop_source, Problems(f"CBIS-DDSM {split} split"), strict_rows=strict_rows)
    return list(_SKIPPED.get(key, []))


def skip_summary(dataset_dir: str | os.PathLike, split: str = "test", crop_source: str = "cropped",
                 strict_rows: bool | str = False) -> dict[str, int]:
    """``{"num_skipped_rows": n}`` for ``metrics.json``: CSV rows of ``split`` left out of the evaluation."""
    return {"num_skipped_rows": len(skipped_rows(dataset_dir, split, crop_source, strict_rows))}


def prepare_synthetic(dataset_dir: str | os.PathLike, synthetic_dir: str | os.PathLike, num_cases: int = 400,
                      seed: int = 0, image_size: Sequence[int] = (256, 192), crop_margin: float = 0.25) -> None:
    """Write the synthetic CBIS-DDSM set into ``dataset_dir`` on first use, only when it is the default
    ``synthetic_dir`` (:func:`common.synthetic.ensure_synthetic`: one process writes, the others wait)."""
    from common.synthetic import ensure_synthetic
    from scripts.phantom import synthesize

    ensure_synthetic(dataset_dir, synthetic_dir, lambda folder: synthesize(
        folder, num_cases=int(num_cases), seed=int(seed), image_size=list(image_size), crop_margin=float(crop_margin)))


def training_split(dataset_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None,
                   val_fraction: float = 0.2, seed: int = 0, synthetic: dict[str, Any] | None = None,
                   crop_source: str = "cropped", strict_rows: bool | str = True) -> dict[str, list[dict]]:
    """The checked ``{"train": [...], "validation": [...]}`` masses of the train CSV for training.

    ``synthetic`` (keyword arguments of :func:`prepare_synthetic`) generates the bundle's synthetic set first when
    ``dataset_dir`` is its default location and still empty; the train CSV is then checked (:func:`validate`). The
    hold-out is seeded, by patient (a patient's CC and MLO views stay together) and stratified by label
    (:func:`common.splits.seeded_split`); the split (mass case ids, and the rows skipped when ``strict_rows`` is
    false, ``skipped_rows``: ``{"row", "case", "reason"}``) is written to ``<output_dir>/splits.json`` and read back
    from there when present (:func:`common.splits.training_split`).

    Raises:
        common.validation.DatasetError: every problem of the data listed (see :func:`validate`), a
            ``splits.json`` that does not match the data (the file named), or fewer than 2 patients (the train CSV
            named, :func:`split_by_patient`).
    """
    if synthetic:
        prepare_synthetic(dataset_dir, **synthetic)
    validate(dataset_dir, ("train",), crop_source, strict_rows=strict_rows)
    items = load_split(dataset_dir, "train", crop_source, strict_rows=strict_rows)  # checked and cached above
    return split_by_patient(dataset_dir, output_dir, items, val_fraction, seed, {i["case"]: i["label"] for i in items},
                            {"skipped_rows": skipped_rows(dataset_dir, "train", crop_source, strict_rows)})


def split_by_patient(dataset_dir: str | os.PathLike, output_dir: str | os.PathLike | None, items: list[dict],
                     val_fraction: float, seed: int, strata: dict[str, Any],
                     extra: dict[str, Any] | None = None) -> dict[str, list[dict]]:
    """``{"train": [...], "validation": [...]}`` of the train CSV's ``items`` (each with ``case`` and ``patient``):
    :func:`common.splits.training_split` by patient, stratified by ``strata`` (case id -> label), ``extra`` recorded
    in ``<output_dir>/splits.json``; the classifier's and the detector's ``training_split``.

    Raises:
        common.validation.DatasetError: a ``splits.json`` that does not match the data (the file named), or fewer
            than 2 patients (``common.splits.TooFewCasesError``, naming the train CSV and the counts).
    """
    from common.splits import select
    from common.splits import training_split as split_cases

    ids = split_cases(output_dir, [i["case"] for i in items], val_fraction, seed,
                      groups={i["case"]: i["patient"] for i in items}, strata=strata, dataset_dir=dataset_dir,
                      group_by="patient", extra=extra, dataset=csv_path(dataset_dir, "train"))
    return {"train": select(items, ids["train"]), "validation": select(items, ids["validation"])}


def evaluation_cases(dataset_dir: str | os.PathLike, synthetic: dict[str, Any] | None = None,
                     crop_source: str = "cropped", strict_rows: bool | str = True) -> list[dict]:
    """The checked masses of the test CSV (evaluation); ``synthetic`` as in :func:`training_split`.

    Raises:
        common.validation.DatasetError: every problem of the test split listed (see :func:`validate`).
    """
    if synthetic:
        prepare_synthetic(dataset_dir, **synthetic)
    validate(dataset_dir, ("test",), crop_source, strict_rows=strict_rows)
    return load_split(dataset_dir, "test", crop_source, strict_rows=strict_rows)


def datalist(dataset_dir: str | os.PathLike, part: str, crop_source: str = "cropped", val_fraction: float = 0.2,
             seed: int = 0, strict_rows: bool | str = True) -> list[dict]:
    """Items of ``part``: ``train``/``validation`` (the seeded split of the train CSV, :func:`training_split`, not
    written) or ``test`` (the test CSV); rows are checked and, unless ``strict_rows``, bad ones skipped exactly as
    :func:`validate` did (the checks are cached)."""
    if part == "test":
        return load_split(dataset_dir, "test", crop_source, strict_rows=strict_rows)
    if part not in ("train", "validation"):
        raise ValueError(f"part must be 'train', 'validation' or 'test', got {part!r}.")
    return training_split(dataset_dir, None, val_fraction, seed, crop_source=crop_source, strict_rows=strict_rows)[part]


def validate(dataset_dir: str | os.PathLike, splits: Sequence[str] = ("train",), crop_source: str = "cropped",
             strict_rows: bool | str = True) -> None:
    """Check the dataset before any compute and report every problem at once.

    Raises:
        common.validation.DatasetError: listing every problem, each naming its CSV line, case and file (row problems
            only with ``strict_rows``; without it a split whose every row is bad is still an error).
    """
    problems = Problems(f"CBIS-DDSM mass dataset {dataset_dir}")
    if check_dir(str(dataset_dir), problems, "dataset folder", override="--dataset_dir"):
        _folder_index.cache_clear()
        loaded = {split: load_split(dataset_dir, split, crop_source, problems, strict_rows=strict_rows)
                  for split in splits}
    problems.raise_if_any()
    for split, items in loaded.items():
        labels = {i["label"] for i in items}
        if len(labels) < 2:
            logger.warning("%s split has only class(es) %s: AUC is undefined", split, sorted(labels))


def class_weights(items: Sequence[dict], weights: Any = "balanced") -> Any:
    """Cross-entropy class weights: ``"balanced"`` (n / (2 n_c) over the training ``items``' labels) or an explicit
    pair ``[w_benign, w_malignant]``.

    Raises:
        ValueError: an unknown string, or not two positive numbers.
    """
    import torch

    if isinstance(weights, str):
        if weights != "balanced":
            raise ValueError(f"class_weights must be 'balanced' or [w_benign, w_malignant], got {weights!r}.")
        labels = np.array([i["label"] for i in items], dtype=int)
        counts = np.maximum(np.bincount(labels, minlength=2), 1)
        weights = (labels.size / (2.0 * counts)).tolist()
    if len(weights) != 2 or min(weights) <= 0:
        raise ValueError(f"class_weights must hold two positive numbers, got {weights!r}.")
    return torch.tensor([float(w) for w in weights], dtype=torch.float32)
