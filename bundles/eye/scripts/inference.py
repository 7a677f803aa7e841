"""Vessel prediction over a folder of fundus images: a probability PNG and a binary mask PNG per image.

Outputs, under ``<output_dir>/predictions/``, at the input's size: ``<stem>_prob.png`` (uint8, probability x 255)
and ``<stem>_seg.png`` (uint8, vessel = 255 as in DRIVE's ``1st_manual``, background 0); both are 0 outside the FOV.
The FOV mask is looked up as ``<stem>_mask.*`` beside the image, in ``mask/`` below or beside the image folder
(the DRIVE layout); when there is none it is estimated from the image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.checkpoint import load_network_weights
from common.io import save_png
from common.validation import run_each

from .data import IMAGE_SUFFIXES, MASK_SUFFIXES

logger = logging.getLogger(__name__)


def find_fov(image: Path) -> str:
    """The FOV mask of ``image`` if one exists (``""`` otherwise)."""
    names = [f"{image.stem}_mask{s}" for s in MASK_SUFFIXES]
    for folder in (image.parent, image.parent / "mask", image.parent.parent / "mask"):
        for name in names:
            if (folder / name).is_file():
                return str(folder / name)
    return ""


def list_inputs(input_dir: str) -> list[Path]:
    """Fundus images in ``input_dir`` (``*.tif``, ``*.png``, ``*.jpg``; FOV masks ``*_mask.*`` excluded).

    Raises:
        FileNotFoundError: ``input_dir`` does not exist or holds no image.
    """
    folder = Path(str(input_dir))
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} does not exist (set --input_dir)")
    images = sorted(p for p in folder.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_mask"))
    if not images:
        raise FileNotFoundError(f"input folder {folder} holds no fundus image ({', '.join(IMAGE_SUFFIXES)}); "
                                "set --input_dir")
    return images


@torch.no_grad()
def predict_image(image: Path, output_dir: str, network: torch.nn.Module, preprocessing: Callable,
                  inferer: Callable, postprocessing: Callable, device: torch.device) -> list[str]:
    """Predict one image and write its probability and mask PNGs; returns the written paths.

    ``postprocessing`` maps ``{"pred": logits (1xHxW), "fov": ...}`` to ``pred`` (binary) and ``prob``.
    """
    data = preprocessing({"image": str(image), "fov": find_fov(image), "case": image.stem})
    logits = inferer(torch.as_tensor(data["image"])[None].to(device), network)
    out = postprocessing({"pred": torch.as_tensor(logits)[0].detach().cpu(), "fov": data["fov"]})
    prob_u8 = np.round(torch.as_tensor(out["prob"])[0].numpy() * 255).astype(np.uint8)
    mask_u8 = (torch.as_tensor(out["pred"])[0].numpy() > 0).astype(np.uint8) * 255
    out = Path(str(output_dir)) / "predictions"
    paths = [out / f"{image.stem}_prob.png", out / f"{image.stem}_seg.png"]
    save_png(prob_u8, paths[0])
    save_png(mask_u8, paths[1])
    return [str(p) for p in paths]


def predict_folder(input_dir: str, output_dir: str, network: torch.nn.Module, preprocessing: Callable,
                   inferer: Callable, postprocessing: Callable, ckpt_path: str, device: Any = "cpu") -> list[str]:
    """Predict every fundus image of ``input_dir`` with the weights of ``ckpt_path``.

    A bad image does not stop the others; at the end ``BatchFailure`` names every failed file (non-zero exit).

    Raises:
        FileNotFoundError: no input folder or no image; CheckpointError: missing or unfitting checkpoint.
    """
    images = list_inputs(input_dir)
    load_network_weights(network, ckpt_path)
    network.eval()
    written = run_each(images, lambda p: predict_image(p, output_dir, network, preprocessing, inferer,
                                                       postprocessing, torch.device(device)),
                       name_of=str, what="eye vessel inference")
    logger.info("wrote %d prediction files to %s", sum(len(w) for w in written), Path(output_dir) / "predictions")
    return [p for w in written for p in w]
