"""Simulated scanners of the phantoms (site shift for transfer experiments, ``docs/fine-tuning.md``): what the brain,
cardiac, eye and breast ``scripts/phantom.py`` share.

Each phantom keeps its own table ``SCANNERS`` (scanner id -> response settings; "A" is the default and leaves every
image as before) and its own way of applying it; this module holds the look-up that refuses an unknown id and the
tissue-contrast + site-wide bias-field response of the MR phantoms (brain, cardiac).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def scanner_response(scanners: Mapping[str, Mapping[str, Any]], scanner: str) -> Mapping[str, Any]:
    """The settings of simulated scanner ``scanner`` in the phantom's table ``scanners``.

    Raises:
        ValueError: an unknown scanner name (the message lists the known ones, sorted).
    """
    if str(scanner) not in scanners:
        raise ValueError(f"unknown scanner {scanner!r}: choose one of {sorted(scanners)}")
    return scanners[str(scanner)]


def contrast_and_bias(image: np.ndarray, contrast: float, bias: float, u: np.ndarray) -> np.ndarray:
    """A noise-free intensity image as an MR scanner of another site sees it: ``max(image, 0) ** contrast *
    exp(bias * u)``.

    ``contrast`` is an exponent on the tissue intensities (below 1 flattens the tissue contrast, as another sequence
    timing does; above 1 hardens it); ``exp(bias * u)`` is a site-wide multiplicative field (a receive coil's
    sensitivity profile), ``u`` running from -1 to 1 across the field of view.

    Args:
        image: noise-free intensities, any shape.
        contrast, bias: the scanner's settings (dimensionless).
        u: the position across the field of view in [-1, 1], broadcastable to ``image``.

    Returns:
        float32, the broadcast shape; ``image`` itself, untouched, when ``contrast == 1`` and ``bias == 0``.
    """
    if contrast == 1.0 and bias == 0.0:
        return image
    return (np.power(np.clip(image, 0.0, None), contrast) * np.exp(bias * u)).astype(np.float32)
