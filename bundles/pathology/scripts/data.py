"""The PatchCamelyon layout: checking a data set before any compute, and turning splits into data lists."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from common.validation import Problems, check_dir, check_file
from scripts.phantom import PATCH, split_paths, synthesize

logger = logging.getLogger(__name__)


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


def prepare(dataset_dir: str | Path, synthetic_dir: str | Path,
            splits: list[str] | tuple[str, ...] = ("train", "valid"), num_cases: int = 2000, seed: int = 0,
            num_slides: int = 1, slide_size: int = 2048) -> dict[str, int]:
    """Generate the synthetic set on first use when ``dataset_dir`` is the bundle's default ``synthetic_dir`` and it
    has no data yet; then :func:`validate` the splits."""
    dataset_dir, synthetic_dir = Path(str(dataset_dir)), Path(str(synthetic_dir))
    if dataset_dir.resolve() == synthetic_dir.resolve() and not split_paths(dataset_dir, "train")[0].exists():
        logger.info("no data in %s: generating the synthetic PCam set there (pass --dataset_dir for real data)",
                    dataset_dir)
        synthesize(dataset_dir, num_cases=num_cases, seed=seed, num_slides=num_slides, slide_size=slide_size)
    return validate(dataset_dir, splits)


def datalist(dataset_dir: str | Path, split: str, limit: int | None = None) -> list[dict[str, Any]]:
    """One item per patch of ``split``: ``{"image": x file, "index": i, "label": [y], "case": "<split>_<i>"}``.

    ``limit`` (optional) keeps the first ``limit`` patches (quick runs on the real 262k-patch training set).
    A missing split gives an empty list: the workflows validate the data set (``prepare``/``validate``, the first
    step of ``run``) before any data set is built, so this only happens when a config is inspected without data
    (e.g. ``ConfigWorkflow.check_properties``).
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
