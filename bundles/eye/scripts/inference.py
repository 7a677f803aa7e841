"""Vessel prediction over a folder of fundus images: a probability PNG and a binary mask PNG per image.

``inference.json`` runs MONAI's evaluator over the images (:mod:`common.inference`); this module gives its parts:
the input listing, the item of one image and the writer of one image's outputs. A bad image does not stop the
others; the run then fails naming every failed file (non-zero exit).

Outputs, under ``<output_dir>/predictions/``, at the input's size: ``<stem>_prob.png`` (uint8, probability x 255)
and ``<stem>_seg.png`` (uint8, vessel = 255 as in DRIVE's ``1st_manual``, background 0); both are 0 outside the FOV.
The FOV mask is looked up as ``<stem>_mask.*`` beside the image, in ``mask/`` below or beside the image folder
(the DRIVE layout); when there is none it is estimated from the image. With ``--uncertainty true`` also
``<stem>_uncertainty.png`` (entropy of the TTA mean probability, 8-bit, scale in its PNG text metadata) and
``<output_dir>/uncertainty.csv`` (:mod:`common.uncertainty`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.inference import output_path
from common.inputs import list_input_folder
from common.io import save_png
from common.uncertainty import case_score, write_entropy_png, write_uncertainty_csv

from .data import IMAGE_SUFFIX_TEXT, IMAGE_SUFFIXES, MASK_SUFFIXES

logger = logging.getLogger(__name__)


def find_fov(image: Path) -> str:
    """The FOV mask of ``image`` if one exists (``""`` otherwise): ``<stem>_mask.{gif,png,tif,tiff}`` (any case)
    beside the image, in ``mask/`` below it or in ``mask/`` beside its folder (the DRIVE layout)."""
    for folder in (image.parent, image.parent / "mask", image.parent.parent / "mask"):
        if not folder.is_dir():
            continue
        found = sorted(p for p in folder.iterdir()
                       if p.stem == f"{image.stem}_mask" and p.suffix.lower() in MASK_SUFFIXES and p.is_file())
        if found:
            return str(found[0])
    return ""


#: Stem endings (lower-case) of vessel annotations in the public fundus sets, never predicted as images: DRIVE
#: ``NN_manual1``/``_manual2``, STARE ``imNNNN.ah``/``.vk``, CHASE_DB1 ``Image_NNL_1stHO``/``_2ndHO``.
ANNOTATION_STEMS = ("_manual1", "_manual2", ".ah", ".vk", "_1stho", "_2ndho")


def classify_input(entry: Path) -> tuple[str, str]:
    """Whether an entry of the eye input folder is predicted (``"predict"``), used (``"used"``: an FOV mask of an image
    beside it, the DRIVE ``mask/`` folder) or not predicted (``"skip"``), with the reason (for
    :func:`common.inputs.list_input_folder`)."""
    if entry.is_dir():
        if entry.name == "mask":
            return "used", "FOV mask folder (DRIVE layout), read for the images of the same stem"
        return "skip", "a folder: eye inference predicts the image files directly in --input_dir"
    suffix, stem = entry.suffix.lower(), entry.stem.lower()
    if suffix in (".gz", ".zip", ".bz2", ".xz", ".7z", ".tar"):
        return "skip", f"a compressed file ({suffix}): decompress it (e.g. gunzip a STARE *.ppm.gz) first"
    if suffix not in IMAGE_SUFFIXES:
        return "skip", f"'{suffix or '(no suffix)'}' is not an image format Pillow reads"
    if stem.endswith("_mask"):
        image_stem = entry.stem[: -len("_mask")]
        if any(p.stem == image_stem and p.suffix.lower() in IMAGE_SUFFIXES for p in entry.parent.iterdir()):
            return "used", f"FOV mask of {image_stem}"
        return "skip", f"looks like an FOV mask (*_mask) but no image {image_stem}.* is beside it"
    if stem.endswith(ANNOTATION_STEMS):
        return "skip", ("a vessel annotation (DRIVE *_manual1, STARE *.ah/*.vk, CHASE *_1stHO/*_2ndHO), "
                        "not a fundus image")
    return "predict", ""


def list_inputs(input_dir: str) -> list[Path]:
    """Fundus images directly in ``input_dir``: every file in a format Pillow reads (:data:`IMAGE_SUFFIXES`: .tif,
    .png, .jpg, .ppm (STARE), .bmp, .gif, ...; any case), except FOV masks ``*_mask.*`` and vessel annotations.
    Every other entry is named in a warning with the reason (:func:`common.inputs.list_input_folder`).

    Raises:
        common.validation.DatasetError: ``input_dir`` does not exist or holds no image (naming what it holds).
    """
    return list_input_folder(input_dir, classify_input, f"fundus image ({IMAGE_SUFFIX_TEXT})").predict


def case_items(image: Path) -> dict[str, Any]:
    """The item of one fundus image: ``{"image": path, "fov": its FOV mask path or "" (estimated), "case": stem}``."""
    return {"image": str(image), "fov": find_fov(image), "case": image.stem}


def write_uncertainty(stem: str, uncertainty: Any, vessels: np.ndarray, path: Path, band: int = 2) -> dict[str, Any]:
    """Write the entropy of the TTA mean vessel probability as an 8-bit PNG (scale in its text metadata,
    :func:`common.uncertainty.write_entropy_png`; 0 outside the FOV); return the image's ``uncertainty.csv`` row
    (mean entropy over the predicted vessels and a ``band``-pixel band around them, nats).

    Args:
        uncertainty: ``(1, H, W)`` entropy in nats (:class:`common.uncertainty.PredictiveEntropyd` of ``prob``).
        vessels: ``(H, W)`` bool, the predicted vessel mask.
    """
    entropy = torch.as_tensor(uncertainty).detach().cpu()[0].numpy()
    nats_per_level = write_entropy_png(entropy, path, channels=1, activation="sigmoid")
    return {"case": stem, "uncertainty_score": case_score(entropy, vessels, band), "band_pixels": band,
            "unit": "nats", "png_nats_per_level": nats_per_level}


def write_case(case: dict[str, Any], output_dir: str) -> dict[str, Any] | None:
    """Write one image's probability and mask PNGs, and with uncertainty on ``<stem>_uncertainty.png``; returns the
    image's ``uncertainty.csv`` row (None without uncertainty).

    ``case`` holds ``prob`` (1xHxW, in [0, 1]) and ``pred`` (1xHxW, binary), both 0 outside the FOV after
    ``postprocessing``: ``<stem>_prob.png`` is the probability x 255, ``<stem>_seg.png`` the mask as 0/255 (uint8);
    with uncertainty also ``uncertainty`` (1xHxW, nats, 0 outside the FOV).
    """
    prob_u8 = np.round(torch.as_tensor(case["prob"]).detach().cpu()[0].numpy() * 255).astype(np.uint8)
    mask_u8 = (torch.as_tensor(case["pred"]).detach().cpu()[0].numpy() > 0).astype(np.uint8) * 255
    paths = [output_path(output_dir, f"{case['case']}_prob.png"), output_path(output_dir, f"{case['case']}_seg.png")]
    save_png(prob_u8, paths[0])
    save_png(mask_u8, paths[1])
    logger.info("%s: %s, %s", case["case"], paths[0], paths[1])
    if case.get("uncertainty") is None:
        return None
    return write_uncertainty(str(case["case"]), case["uncertainty"], mask_u8 > 0,
                             output_path(output_dir, f"{case['case']}_uncertainty.png"))


def finish(rows: list[dict[str, Any]], output_dir: str) -> None:
    """Write ``<output_dir>/uncertainty.csv`` (one row per predicted image; only with uncertainty on: the rows)."""
    write_uncertainty_csv(output_dir, rows)
