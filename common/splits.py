"""The training/validation split of every bundle: made once, seeded, written to ``<output_dir>/splits.json`` and
read back whenever that file is present.

As nnU-Net re-reads ``splits_final.json``, a second training run in the same ``--output_dir`` (a resumed run, or a
run with another ``--seed``) and any later step that needs the split use the cases listed in the file, not a new
draw. The layout is the same in the five bundles::

    {"format": "splits/1", "source": "seeded" | "layout" | "datalist", "dataset_dir": "...",
     "seed": 0, "val_fraction": 0.2 (null unless seeded), "group_by": "case" | "patient",
     "train": ["<case id>", ...], "validation": ["<case id>", ...], ...extra keys of the bundle}

``source`` says where the split came from: ``seeded`` (a seeded hold-out of the layout's training cases, brain, eye,
breast, cardiac), ``layout`` (the layout names it, PCam ``train``/``valid``), ``datalist`` (a Decathlon-style datalist
JSON names it, brain). Case ids are the bundles' ``case`` ids (cardiac and breast: the patient or mass ids listed by
the bundle). Delete the file (or use another ``--output_dir``) to draw a new split.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.io import write_json
from common.validation import DatasetError

logger = logging.getLogger(__name__)

SPLITS_FILE = "splits.json"
FORMAT = "splits/1"
PARTS = ("train", "validation")
SOURCES = ("seeded", "layout", "datalist")


class SplitsFileError(DatasetError):
    """``splits.json`` does not match the data (cases missing) or is not in the :data:`FORMAT` layout."""


class TooFewCasesError(DatasetError):
    """Too few cases (or patients) to make a training/validation split; the message's last line names the data set
    (folder or list file), how many were found and how many are needed."""

    def __init__(self, dataset: str | os.PathLike | None, found: str, needed: str) -> None:
        where = str(dataset) if dataset is not None else "the data"
        super().__init__("too few cases for a train/validation split", [(where, f"{found}; {needed}")])


def check_enough(cases: Sequence[str], groups: Mapping[str, str] | None = None,
                 dataset: str | os.PathLike | None = None, group_by: str = "case") -> None:
    """Refuse a seeded split of ``cases`` that could not hold one group out and still train on another.

    Args:
        cases: the case ids.
        groups: case id -> group id (default: every case its own group).
        dataset: the folder or list file the cases come from, named in the error.
        group_by: what one group is (``"case"``, ``"patient"``), named in the error.

    Raises:
        TooFewCasesError: fewer than 2 groups; e.g. the last line
            ``  - /data/training: 1 patient(s) found; a train/validation split needs at least 2 patients (one held
            out for validation, one trained on)``.
    """
    count = len({str(groups[c]) if groups is not None else str(c) for c in cases})
    if count >= 2:
        return
    if groups is not None and group_by != "case":
        found = f"{len(cases)} case(s) of {count} {group_by}(s) found"
    else:
        found = f"{len(cases)} {group_by}(s) found"
    raise TooFewCasesError(dataset, found, f"a train/validation split needs at least 2 {group_by}s (one held out "
                                           f"for validation, one trained on)")


def seeded_split(cases: Sequence[str], val_fraction: float, seed: int, groups: Mapping[str, str] | None = None,
                 strata: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """A seeded hold-out of ``cases`` into ``{"train": [...], "validation": [...]}`` (each in the order of ``cases``).

    Whole groups (e.g. every view of one patient) go to one side; with ``strata`` (a label per case; a group's
    stratum is its largest label) each stratum contributes its share, so a rare class is held out too. Per stratum
    in sorted order, the groups are shuffled by ``numpy.random.default_rng(seed)`` and taken while fewer than
    ``val_fraction`` of its cases minus one half are held out (so the count is ``val_fraction * n`` rounded half up
    for single-case groups). At least one group is held out, and at least one always stays for training, whatever
    ``val_fraction`` is.

    Args:
        cases: the case ids (unique).
        val_fraction: the held-out fraction, in (0, 1).
        seed: the split's seed.
        groups: case id -> group id (default: every case its own group).
        strata: case id -> label (default: one stratum).

    Returns:
        ``{"train": [...], "validation": [...]}``, both non-empty.

    Raises:
        ValueError: ``val_fraction`` outside (0, 1), duplicate case ids, or fewer than 2 groups (one is needed for
            training and one for validation).
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}.")
    cases = [str(c) for c in cases]
    if len(set(cases)) != len(cases):
        raise ValueError(f"case ids are not unique: {sorted({c for c in cases if cases.count(c) > 1})[:5]}")
    group_of = {c: str(groups[c]) if groups is not None else c for c in cases}
    members: dict[str, list[str]] = {}
    for c in cases:
        members.setdefault(group_of[c], []).append(c)
    if len(members) < 2:
        raise ValueError(f"{len(cases)} case(s) in {len(members)} group(s): a split needs at least 2 "
                         f"(one is held out for validation, one is trained on).")
    stratum_of = {g: max(strata[c] for c in cs) if strata is not None else 0 for g, cs in members.items()}
    rng = np.random.default_rng(int(seed))
    held: list[str] = []
    first_shuffled: str | None = None
    for stratum in sorted(set(stratum_of.values())):
        order = sorted(g for g in members if stratum_of[g] == stratum)
        rng.shuffle(order)
        first_shuffled = first_shuffled or order[0]
        wanted, taken = float(val_fraction) * sum(len(members[g]) for g in order), 0
        for group in order:
            if taken >= wanted - 0.5 or len(held) >= len(members) - 1:
                break
            held.append(group)
            taken += len(members[group])
    if not held:
        held.append(str(first_shuffled))
    held_set = set(held)
    return {"train": [c for c in cases if group_of[c] not in held_set],
            "validation": [c for c in cases if group_of[c] in held_set]}


def read_splits(path: str | os.PathLike, cases: Sequence[str] | None = None) -> dict[str, Any]:
    """Read and check a ``splits.json``: the :data:`FORMAT` layout, both parts non-empty and disjoint, and (with
    ``cases``) every listed case present in the data.

    Raises:
        SplitsFileError: naming the file and what is wrong (unknown layout, empty or overlapping parts, cases
            missing from the data).
    """
    path = Path(str(path))
    fix = "delete it (a new split is drawn) or use another --output_dir"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SplitsFileError(str(path), [(str(path), f"not a readable JSON file ({e}); {fix}")]) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise SplitsFileError(str(path), [(str(path), f"unknown splits layout (format {found!r}, expected "
                                                      f"{FORMAT!r} with 'train' and 'validation' case lists); {fix}")])
    problems = []
    for part in PARTS:
        value = record.get(part)
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            problems.append((str(path), f"'{part}' must be a non-empty list of case ids; {fix}"))
    if not problems:
        both = set(record["train"]) & set(record["validation"])
        if both:
            problems.append((str(path), f"{len(both)} case(s) in both 'train' and 'validation' "
                                        f"(e.g. {sorted(both)[:3]}); {fix}"))
        if cases is not None:
            known = set(str(c) for c in cases)
            missing = [c for part in PARTS for c in record[part] if c not in known]
            if missing:
                problems.append((str(path), f"{len(missing)} listed case(s) are not in the data set "
                                            f"(e.g. {missing[:3]}): the file was written for other data; {fix}"))
    if problems:
        raise SplitsFileError(str(path), problems)
    return record


def training_split(output_dir: str | os.PathLike | None, cases: Sequence[str], val_fraction: float = 0.2,
                   seed: int = 0, groups: Mapping[str, str] | None = None, strata: Mapping[str, Any] | None = None,
                   given: Mapping[str, Sequence[str]] | None = None, source: str = "seeded",
                   dataset_dir: str | os.PathLike | None = None, group_by: str = "case",
                   extra: Mapping[str, Any] | None = None,
                   dataset: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """The split of ``cases`` for training: read from ``<output_dir>/splits.json`` when present, else made and
    written there (atomically, by rank 0 only).

    Args:
        output_dir: the run's ``--output_dir`` (None: made, not written, never read).
        cases: every case id the data offers for training and validation.
        val_fraction, seed, groups, strata: see :func:`seeded_split` (used when nothing is ``given``).
        given: the split the layout or a datalist names (``{"train", "validation"}``); ``source`` says which.
        source: one of :data:`SOURCES`.
        dataset_dir: recorded in the file.
        group_by: what ``groups`` holds (``"patient"``), recorded in the file.
        extra: further keys recorded in the file (e.g. breast's ``skipped_rows``).
        dataset: the folder or list file the cases come from, named when there are too few (default
            ``dataset_dir``; e.g. breast's train CSV, brain's datalist JSON).

    Returns:
        ``{"train": [...], "validation": [...]}`` case ids. Cases of the data that a present file does not list are
        not used (a warning says how many).

    Raises:
        SplitsFileError: the present file does not match the data or has an unknown layout (the file is named).
        TooFewCasesError: fewer than 2 groups to draw from (:func:`check_enough`), or a part of ``given`` that is
            empty; ``dataset`` is named with the counts found and needed.
        ValueError: ``val_fraction`` outside (0, 1), duplicate case ids (:func:`seeded_split`); ``source`` unknown.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
    path = Path(str(output_dir)) / SPLITS_FILE if output_dir is not None else None
    if path is not None and path.is_file():
        record = read_splits(path, cases)
        unlisted = len(set(map(str, cases)) - set(record["train"]) - set(record["validation"]))
        if unlisted:
            logger.warning("%s: %d case(s) of the data are in neither part and are not used (the split is re-read "
                           "from this file; delete it to draw a new one)", path, unlisted)
        logger.info("split read from %s: %d training, %d validation cases", path, len(record["train"]),
                    len(record["validation"]))
        return {part: list(record[part]) for part in PARTS}
    named = dataset if dataset is not None else dataset_dir
    if given is not None:
        split = {part: [str(c) for c in given[part]] for part in PARTS}
        if not all(split[part] for part in PARTS):
            raise TooFewCasesError(named, f"{len(split['train'])} training and {len(split['validation'])} validation "
                                          f"case(s) found", "a train/validation split needs at least 1 in each")
    else:
        check_enough(cases, groups, named, group_by)
        split = seeded_split(cases, val_fraction, seed, groups, strata)
    if path is not None:
        from common.distributed import is_rank0

        if is_rank0():
            record = {"format": FORMAT, "source": source,
                      "dataset_dir": str(dataset_dir) if dataset_dir is not None else None,
                      "seed": int(seed) if given is None else None,
                      "val_fraction": float(val_fraction) if given is None else None,
                      "group_by": str(group_by), **dict(extra or {}), **split}
            write_json(path, record)
    logger.info("split (%s): %d training, %d validation cases", source, len(split["train"]), len(split["validation"]))
    return split


def trained_on(output_dir: str | os.PathLike | None, dataset_dir: str | os.PathLike,
               cases: Sequence[str]) -> list[str]:
    """The ``cases`` (evaluated from ``dataset_dir``) that the training run in ``output_dir`` trained on, according to
    its ``splits.json`` (same ``dataset_dir``, listed under ``train``); a warning names the file and the count.

    Empty when there is no such file, it records another data set, or it cannot be read (evaluation does not depend
    on it).
    """
    path = Path(str(output_dir)) / SPLITS_FILE if output_dir is not None else None
    if path is None or not path.is_file():
        return []
    try:
        record = read_splits(path)
    except SplitsFileError:
        return []
    recorded = record.get("dataset_dir")
    if not recorded or Path(str(recorded)).resolve() != Path(str(dataset_dir)).resolve():
        return []
    seen = set(record["train"])
    overlap = [str(c) for c in cases if str(c) in seen]
    if overlap:
        logger.warning("%s: %d of the %d evaluated cases were trained on (listed under 'train'): these metrics are "
                       "not held-out; evaluate on another --dataset_dir (e.g. synthesize one with another --seed)",
                       path, len(overlap), len(cases))
    return overlap


def select(items: Sequence[Mapping[str, Any]], ids: Sequence[str], key: str = "case") -> list[Any]:
    """The ``items`` whose ``key`` is in ``ids``, in the order of ``items``."""
    keep = set(ids)
    return [item for item in items if str(item[key]) in keep]
