"""The PatchCamelyon layout: checking a data set before any compute, and turning splits into data lists."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from common.validation import Problems, check_dir, check_file

logger = logging.getLogger(__name__)

PATCH = 96  # PCam patches are 96 x 96 RGB
SPLITS = ("train", "valid", "test")


def split_paths(dataset_dir: str | Path, split: str) -> tuple[Path, Path]:
    """The PCam x and y files of ``split`` under ``dataset_dir``."""
    stem = Path(str(dataset_dir)) / f"camelyonpatch_level_2_split_{split}"
    return Path(f"{stem}_x.h5"), Path(f"{stem}_y.h5")


def check_split(dataset_dir: str | Path, split: str, problems: Problems) -> int:
    """Check one PCam split (files, dataset names, shapes, dtypes, x/y counts, labels); return its size (0 if bad)."""
    path_x, path_y = split_paths(dataset_dir, split)
    shapes: dict[str, int] = {}
    for path, name in ((path_x, "x"), (path_y, "y")):
        if not check_file(path, problems, f"PCam {split} {name} file"):
            continue
        try:
            with h5py.File(path, "r") as f:
                if name not in f:
                    problems.add(path, f"no dataset named '{name}' (found {sorted(f.keys())}); PCam stores "
                                       f"images as 'x' and labels as 'y'")
                    continue
                data = f[name]
                if name == "x":
                    if data.ndim != 4 or tuple(data.shape[1:]) != (PATCH, PATCH, 3):
                        problems.add(path, f"dataset 'x' has shape {data.shape}, expected N x {PATCH} x {PATCH} x 3")
                        continue
                    if data.dtype != np.uint8:
                        problems.add(path, f"dataset 'x' has dtype {data.dtype}, expected uint8")
                        continue
                else:
                    if data.ndim < 1 or int(np.prod(data.shape[1:], dtype=int)) != 1:
                        problems.add(path, f"dataset 'y' has shape {data.shape}, expected N x 1 x 1 x 1")
                        continue
                    values = set(np.unique(np.asarray(data)).tolist())
                    if not values <= {0, 1}:
                        problems.add(path, f"dataset 'y' holds values {sorted(values)[:10]}, expected 0/1 labels")
                        continue
                if data.shape[0] == 0:
                    problems.add(path, f"dataset '{name}' is empty (0 patches)")
                    continue
                shapes[name] = int(data.shape[0])
        except OSError as e:
            problems.add(path, f"not a readable HDF5 file ({e})")
    if len(shapes) == 2 and shapes["x"] != shapes["y"]:
        problems.add(path_x, f"{shapes['x']} images but {shapes['y']} labels in {path_y.name}")
        return 0
    return shapes.get("x", 0) if len(shapes) == 2 else 0


def validate(dataset_dir: str | Path, splits: list[str] | tuple[str, ...] = ("train", "valid")) -> dict[str, int]:
    """Check the listed PCam splits under ``dataset_dir``; raise ``DatasetError`` listing every problem at once."""
    problems = Problems(f"PCam dataset {dataset_dir}")
    counts: dict[str, int] = {}
    if check_dir(dataset_dir, problems, "dataset folder", override="--dataset_dir"):
        for split in splits:
            counts[split] = check_split(dataset_dir, split, problems)
    problems.raise_if_any()
    logger.info("PCam dataset %s: %s patches", dataset_dir, counts)
    return counts


def prepare_synthetic(dataset_dir: str | Path, synthetic_dir: str | Path, num_cases: int = 2000, seed: int = 0,
                      num_slides: int = 1, slide_size: int = 2048) -> None:
    """Write the synthetic PCam set (and slides) into ``dataset_dir`` on first use, only when it is the default
    ``synthetic_dir`` (:func:`common.synthetic.ensure_synthetic`: one process writes, the others wait)."""
    from common.synthetic import ensure_synthetic
    from scripts.phantom import synthesize

    ensure_synthetic(dataset_dir, synthetic_dir, lambda folder: synthesize(
        folder, num_cases=int(num_cases), seed=int(seed), num_slides=int(num_slides), slide_size=int(slide_size)))


def training_split(dataset_dir: str | Path, output_dir: str | Path | None = None, synthetic: dict | None = None,
                   limit: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """The checked ``{"train": [...], "validation": [...]}`` patches for training: PCam's own ``train`` (the first
    ``limit`` patches, when given) and ``valid`` splits.

    ``synthetic`` (keyword arguments of :func:`prepare_synthetic`) generates the bundle's synthetic set first when
    ``dataset_dir`` is its default location and still empty; both splits are then checked (:func:`validate`). The
    split (patch case ids, ``source`` ``layout``) is written to ``<output_dir>/splits.json`` and read back from
    there when present (:func:`common.splits.training_split`).

    Raises:
        DatasetError: every problem of the data listed, or a ``splits.json`` that does not match the data (the file
            named).
    """
    from common.splits import select
    from common.splits import training_split as split_cases

    if synthetic:
        prepare_synthetic(dataset_dir, **synthetic)
    validate(dataset_dir, ("train", "valid"))
    parts = {"train": datalist(dataset_dir, "train", limit), "validation": datalist(dataset_dir, "valid")}
    ids = split_cases(output_dir, [i["case"] for part in parts.values() for i in part],
                      given={part: [i["case"] for i in items] for part, items in parts.items()}, source="layout",
                      dataset_dir=dataset_dir)
    return {part: select(items, ids[part]) for part, items in parts.items()}


def evaluation_cases(dataset_dir: str | Path, synthetic: dict | None = None) -> list[dict[str, Any]]:
    """The checked patches of PCam's ``test`` split (evaluation); ``synthetic`` as in :func:`training_split`.

    Raises:
        DatasetError: every problem of the test split listed.
    """
    if synthetic:
        prepare_synthetic(dataset_dir, **synthetic)
    validate(dataset_dir, ("test",))
    return datalist(dataset_dir, "test")


def datalist(dataset_dir: str | Path, split: str, limit: int | None = None) -> list[dict[str, Any]]:
    """One item per patch of ``split``: ``{"image": x file, "index": i, "label": [y], "case": "<split>_<i>"}``.

    ``limit`` (optional) keeps the first ``limit`` patches (quick runs on the real 262k-patch training set).
    A missing split gives an empty list: the workflows validate the data set first (:func:`training_split`,
    :func:`evaluation_cases`), so this only happens when a config is inspected without data (e.g.
    ``ConfigWorkflow.check_properties``).
    """
    path_x, path_y = split_paths(dataset_dir, split)
    if not path_y.is_file():
        logger.warning("PCam %s labels %s not found: empty data list", split, path_y)
        return []
    with h5py.File(path_y, "r") as f:
        labels = np.asarray(f["y"]).reshape(-1).astype(np.float32)
    if limit is not None and int(limit) > 0:
        labels = labels[: int(limit)]
    return [{"image": str(path_x), "index": i, "label": np.array([labels[i]], np.float32), "case": f"{split}_{i:06d}"}
            for i in range(len(labels))]
