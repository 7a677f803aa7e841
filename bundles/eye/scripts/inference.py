"""Vessel prediction over a folder of fundus images: a probability PNG and a binary mask PNG per image.

Outputs, under ``<output_dir>/predictions/``, at the input's size: ``<stem>_prob.png`` (uint8, probability x 255)
and ``<stem>_seg.png`` (uint8, vessel = 255 as in DRIVE's ``1st_manual``, background 0); both are 0 outside the FOV.
The FOV mask is looked up as ``<stem>_mask.*`` beside the image, in ``mask/`` below or beside the image folder
(the DRIVE layout); when there is none it is estimated from the image. With ``--uncertainty true`` also
``<stem>_uncertainty.png`` (entropy of the TTA mean probability, 8-bit, scale in its PNG text metadata) and
``<output_dir>/uncertainty.csv`` (:mod:`common.uncertainty`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.checkpoint import load_network_weights
from common.inputs import list_input_folder
from common.io import save_png
from common.uncertainty import case_score, write_entropy_png, write_uncertainty_csv
from common.validation import run_each

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


@torch.no_grad()
def predict_image(image: Path, output_dir: str, network: torch.nn.Module, preprocessing: Callable,
                  inferer: Callable, postprocessing: Callable, device: torch.device,
                  uncertainty_rows: list | None = None) -> list[str]:
    """Predict one image and write its probability and mask PNGs; returns the written paths. With uncertainty (the
    postprocessing computed ``uncertainty``), also ``<stem>_uncertainty.png``, its row appended to
    ``uncertainty_rows``.

    ``postprocessing`` maps ``{"pred": logits (1xHxW), "fov": ...}`` to ``pred`` (binary) and ``prob``.
    """
    data = preprocessing({"image": str(image), "fov": find_fov(image), "case": image.stem})
    logits = inferer(torch.as_tensor(data["image"])[None].to(device), network)
    out_data = out = postprocessing({"pred": torch.as_tensor(logits)[0].detach().cpu(), "fov": data["fov"]})
    prob_u8 = np.round(torch.as_tensor(out["prob"])[0].numpy() * 255).astype(np.uint8)
    mask_u8 = (torch.as_tensor(out["pred"])[0].numpy() > 0).astype(np.uint8) * 255
    out = Path(str(output_dir)) / "predictions"
    paths = [out / f"{image.stem}_prob.png", out / f"{image.stem}_seg.png"]
    save_png(prob_u8, paths[0])
    save_png(mask_u8, paths[1])
    if "uncertainty" in out_data:
        paths.append(out / f"{image.stem}_uncertainty.png")
        row = write_uncertainty(image.stem, out_data, paths[-1])
        if uncertainty_rows is not None:
            uncertainty_rows.append(row)
    return [str(p) for p in paths]


def write_uncertainty(stem: str, data: dict[str, Any], path: Path, band: int = 2) -> dict[str, Any]:
    """Write the entropy of the TTA mean vessel probability as an 8-bit PNG (scale in its text metadata,
    :func:`common.uncertainty.write_entropy_png`; 0 outside the FOV); return the image's ``uncertainty.csv`` row
    (mean entropy over the predicted vessels and a ``band``-pixel band around them, nats)."""
    entropy = torch.as_tensor(data["uncertainty"])[0].numpy()
    nats_per_level = write_entropy_png(entropy, path, channels=1, activation="sigmoid")
    vessels = torch.as_tensor(data["pred"])[0].numpy() > 0
    return {"case": stem, "uncertainty_score": case_score(entropy, vessels, band), "band_pixels": band,
            "unit": "nats", "png_nats_per_level": nats_per_level}


def predict_folder(input_dir: str, output_dir: str, network: torch.nn.Module, preprocessing: Callable,
                   inferer: Callable, postprocessing: Callable, ckpt_path: str, device: Any = "cpu") -> list[str]:
    """Predict every fundus image of ``input_dir`` with the weights of ``ckpt_path``.

    A bad image does not stop the others; at the end ``BatchFailure`` names every failed file (non-zero exit).

    Raises:
        DatasetError: no input folder or no image; CheckpointError: missing or unfitting checkpoint.
    """
    images = list_inputs(input_dir)
    load_network_weights(network, ckpt_path)
    network.eval()
    uncertainty_rows: list[dict[str, Any]] = []
    try:
        written = run_each(images, lambda p: predict_image(p, output_dir, network, preprocessing, inferer,
                                                           postprocessing, torch.device(device), uncertainty_rows),
                           name_of=str, what="eye vessel inference")
    finally:
        write_uncertainty_csv(output_dir, uncertainty_rows)
    logger.info("wrote %d prediction files to %s", sum(len(w) for w in written), Path(output_dir) / "predictions")
    return [p for w in written for p in w]
