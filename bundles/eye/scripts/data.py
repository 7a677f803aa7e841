"""The DRIVE layout reader, the training/validation split and the data checks run before any compute.

Layout: ``D/{training,test}/images/NN_<split>.tif``, ``D/<split>/1st_manual/NN_manual1.gif`` (vessels = 255),
``D/<split>/mask/NN_<split>_mask.gif`` (FOV = 255). A missing FOV mask is not an error: the FOV is then estimated
from the image (:func:`scripts.transforms.estimate_fov`) and a warning names the file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import describe
from common.inputs import pil_image_suffixes
from common.validation import Problems, check_file

from .transforms import binary_values_ok

logger = logging.getLogger(__name__)

#: Fundus image formats: every raster format the installed Pillow opens (DRIVE .tif, STARE .ppm, CHASE/HRF .jpg/.JPG,
#: .png, .bmp, .gif, ...), compared lower-case.
IMAGE_SUFFIXES = tuple(sorted(pil_image_suffixes()))
IMAGE_SUFFIX_TEXT = "*.tif, *.png, *.jpg, *.ppm, *.bmp, ... any format Pillow reads"
MASK_SUFFIXES = (".gif", ".png", ".tif", ".tiff")


def _first_existing(candidates: Sequence[Path]) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def list_split(dataset_dir: str | Path, split: str) -> list[dict[str, str]]:
    """Cases of one DRIVE split: ``{"case", "image", "label", "fov"}`` (``fov`` is ``""`` when no mask exists;
    ``label`` names the expected manual file even when it is missing, so the checks can report it)."""
    root = Path(str(dataset_dir)) / split
    images = []
    for p in sorted((root / "images").glob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            images.append(p)
        elif not p.name.startswith("."):  # hidden files (.DS_Store) are OS artefacts, never data
            logger.warning("%s: not an image file Pillow reads, not used (split '%s')", p, split)
    cases = []
    for image in images:
        number = image.stem.split("_")[0]
        label = _first_existing([root / "1st_manual" / f"{number}_manual1{s}" for s in MASK_SUFFIXES])
        fov = _first_existing([root / "mask" / f"{image.stem}_mask{s}" for s in MASK_SUFFIXES])
        cases.append({"case": image.stem, "image": str(image),
                      "label": str(label or root / "1st_manual" / f"{number}_manual1.gif"), "fov": str(fov or "")})
    return cases


def _read(path: str, problems: Problems, what: str, mode: str) -> np.ndarray | None:
    if not check_file(path, problems, what):
        return None
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert(mode))
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a damaged file
        # the same words as scripts.transforms.read_rgb (inference)
        problems.add(path, f"{what} is corrupt or not an image ({describe(e, one_line=True)})")
        return None


def _check_case(case: dict[str, str], problems: Problems, min_size: Sequence[int], need_label: bool) -> None:
    rgb = _read(case["image"], problems, "image", "RGB")
    if rgb is not None:
        with Image.open(case["image"]) as image:
            if image.mode not in ("RGB", "RGBA", "P"):
                logger.warning("%s: grayscale image (mode %s), replicated to RGB", case["image"], image.mode)
        if rgb.shape[0] < min_size[0] or rgb.shape[1] < min_size[1]:
            problems.add(case["image"], f"image is {rgb.shape[1]}x{rgb.shape[0]} (WxH), smaller than the training "
                                        f"patch {min_size[1]}x{min_size[0]}")
    masks = [("label", "vessel mask (1st_manual)")] if need_label else []
    if case["fov"]:
        masks.append(("fov", "FOV mask"))
    else:
        logger.warning("%s: no FOV mask in mask/, the FOV is estimated from the image", case["image"])
    for key, what in masks:
        mask = _read(case[key], problems, what, "L")
        if mask is None:
            continue
        if rgb is not None and mask.shape != rgb.shape[:2]:
            problems.add(case[key], f"{what} is {mask.shape[1]}x{mask.shape[0]} (WxH) but the image "
                                    f"{Path(case['image']).name} is {rgb.shape[1]}x{rgb.shape[0]}")
        if not binary_values_ok(mask):
            values = np.unique(mask)
            problems.add(case[key], f"{what} is not binary: {values.size} distinct values "
                                    f"(e.g. {values[:6].tolist()}); expected 0 and 255")
        elif key == "fov" and not mask.any():
            problems.add(case[key], "FOV mask is empty (all 0)")


def check_dataset(dataset_dir: str, splits: Sequence[str] = ("training",), min_cases: int = 1,
                  min_size: Sequence[int] = (1, 1), need_label: bool = True) -> str:
    """Check a DRIVE dataset before training or evaluation and report every problem at once.

    Args:
        dataset_dir: the DRIVE folder (``--dataset_dir``).
        splits: the split folders to check (``training`` for train, ``test`` for evaluate).
        min_cases: the fewest images a split may hold.
        min_size: the smallest image (H, W) accepted (the training patch size).
        need_label: whether the manual vessel masks are required.

    Returns:
        ``dataset_dir`` (so the call can be chained in a config).

    Raises:
        DatasetError: listing every problem, each with its file.
    """
    problems = Problems(f"eye dataset {dataset_dir}")
    root = Path(str(dataset_dir))
    if not root.is_dir():
        problems.add(root, "dataset folder does not exist (set --dataset_dir to a DRIVE folder)")
        problems.raise_if_any()
    for split in splits:
        folder = root / split / "images"
        if not folder.is_dir():
            problems.add(folder, f"the '{split}' split has no images/ folder (DRIVE layout expected)")
            continue
        cases = list_split(root, split)
        if len(cases) < int(min_cases):
            problems.add(folder, f"the '{split}' split holds {len(cases)} image(s) ({IMAGE_SUFFIX_TEXT}); "
                                 f"at least {min_cases} needed")
        for case in cases:
            _check_case(case, problems, min_size, need_label)
    problems.raise_if_any()
    return str(dataset_dir)


def prepare_synthetic(dataset_dir: str, synthetic_dir: str, num_cases: int = 20, seed: int = 0, height: int = 584,
                      width: int = 565) -> None:
    """Write the synthetic DRIVE set into ``dataset_dir`` on first use, only when it is the default ``synthetic_dir``
    (:func:`common.synthetic.ensure_synthetic`: one process writes, the others wait). A user-given
    ``--dataset_dir`` is never written to: a missing one is reported by :func:`check_dataset`."""
    from common.synthetic import ensure_synthetic

    from .phantom import write_dataset

    ensure_synthetic(dataset_dir, synthetic_dir, lambda folder: write_dataset(
        folder, num_cases=int(num_cases), seed=int(seed), height=int(height), width=int(width)))


def training_split(dataset_dir: str, output_dir: str | None = None, val_fraction: float = 0.2, seed: int = 0,
                   synthetic: dict | None = None, min_size: Sequence[int] = (1, 1)) -> dict[str, list[dict[str, str]]]:
    """The checked ``{"train": [...], "validation": [...]}`` cases of DRIVE ``training/`` for training.

    ``synthetic`` (keyword arguments of :func:`prepare_synthetic`) generates the bundle's synthetic set first when
    ``dataset_dir`` is its default location and still empty; then ``training/`` is checked (at least 2 images, each
    at least ``min_size`` (H, W), the training patch). A seeded ``val_fraction`` (at least one image, never all) is
    held out (:func:`common.splits.seeded_split`); the split is written to ``<output_dir>/splits.json`` and read
    back from there when present (:func:`common.splits.training_split`).

    Raises:
        DatasetError: every problem of the data listed, or a ``splits.json`` that does not match the data (the file
            named); ValueError: ``val_fraction`` outside (0, 1).
    """
    from common.splits import select
    from common.splits import training_split as split_cases

    if synthetic:
        prepare_synthetic(str(dataset_dir), **synthetic)
    check_dataset(str(dataset_dir), splits=("training",), min_cases=2, min_size=min_size)
    cases = list_split(dataset_dir, "training")
    ids = split_cases(output_dir, [c["case"] for c in cases], val_fraction, seed, dataset_dir=dataset_dir,
                      dataset=Path(str(dataset_dir)) / "training" / "images")
    return {"train": select(cases, ids["train"]), "validation": select(cases, ids["validation"])}


def evaluation_cases(dataset_dir: str, synthetic: dict | None = None) -> list[dict[str, str]]:
    """The checked cases of DRIVE ``test/`` (evaluation); ``synthetic`` as in :func:`training_split`.

    Raises:
        DatasetError: every problem of the test split listed.
    """
    if synthetic:
        prepare_synthetic(str(dataset_dir), **synthetic)
    check_dataset(str(dataset_dir), splits=("test",), min_cases=1)
    return list_split(dataset_dir, "test")
