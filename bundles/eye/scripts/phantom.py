"""Synthetic colour fundus photographs with vessel and field-of-view masks, written in the DRIVE layout.

Every image is drawn from an explicit ``numpy.random.Generator`` (no global random state), so a seed gives the same
dataset on every machine. An image has: an orange-red fundus disc with vignetting and an illumination gradient, a
bright optic disc, a darker macula, a branching vessel tree grown from the optic disc whose widths taper down to
1-2 px (central light reflex on the large vessels), haemorrhages, microaneurysms and exudates that are *not* vessels
(distractors), blur and noise; the field of view (FOV) is a disc as in DRIVE. A simulated camera (``scanner``,
:data:`SCANNERS`; "A" changes nothing) may change illumination, white balance and response curve: a site shift.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from common import scanners
from common.io import atomic_path

logger = logging.getLogger(__name__)

SPLITS = {"training": ("training", 21), "test": ("test", 1)}  # split folder: (file suffix, first DRIVE image number)


def fov_disc(height: int, width: int) -> np.ndarray:
    """The circular field of view of a DRIVE-like image (bool, True inside)."""
    yy, xx = np.mgrid[0:height, 0:width]
    radius = 0.478 * min(height, width)
    return (yy - (height - 1) / 2) ** 2 + (xx - (width - 1) / 2) ** 2 <= radius**2


def _grow_tree(rng: np.random.Generator, start: tuple[float, float], angle: float, radius: float, curl: float,
               scale: float, inside: np.ndarray) -> np.ndarray:
    """Centre-line samples ``(y, x, radius)`` of a branching vessel tree (random walk, tapering, bifurcations)."""
    height, width = inside.shape
    samples: list[tuple[float, float, float]] = []
    stack = [(start[0], start[1], angle, radius, 0, curl / max(scale, 0.3))]
    taper = math.exp(-1.0 / (260.0 * max(scale, 0.25)))
    while stack:
        y, x, angle, r, depth, curl = stack.pop()
        seg_len = rng.uniform(30, 75) * max(scale, 0.3)
        for _ in range(int(seg_len / 0.5)):
            angle += rng.normal(0, 0.02) + curl
            y, x, r = y + 0.5 * math.sin(angle), x + 0.5 * math.cos(angle), r * taper**0.5
            iy, ix = int(round(y)), int(round(x))
            if not (0 <= iy < height and 0 <= ix < width and inside[iy, ix]) or r < 0.45:
                break
            samples.append((y, x, r))
        else:
            if depth < 9 and r > 0.55:
                split = rng.uniform(0.35, 0.8)
                side = 1.0 if rng.random() < 0.5 else -1.0
                stack.append((y, x, angle - side * split * 0.4, r * rng.uniform(0.85, 0.95), depth + 1,
                              curl * 0.8 + rng.normal(0, 0.001)))
                stack.append((y, x, angle + side * split, r * rng.uniform(0.55, 0.75), depth + 1,
                              rng.normal(0, 0.002)))
    return np.asarray(samples, dtype=np.float64).reshape(-1, 3)


def _render_vessels(samples: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise centre-line samples into a binary vessel mask and a darkening map with a central light reflex."""
    vessel = np.zeros(shape, dtype=bool)
    darkness = np.zeros(shape, dtype=np.float64)
    if samples.size == 0:
        return vessel, darkness
    bins = np.clip(np.round(samples[:, 2] * 2) / 2, 0.5, None)  # radius classes of 0.5 px
    for r in np.unique(bins):
        pts = samples[bins == r]
        centre = np.ones(shape, dtype=bool)
        centre[np.clip(np.round(pts[:, 0]).astype(int), 0, shape[0] - 1),
               np.clip(np.round(pts[:, 1]).astype(int), 0, shape[1] - 1)] = False
        dist = ndimage.distance_transform_edt(centre)
        vessel |= dist <= r
        contrast = 0.18 + 0.32 * min(1.0, r / 4.0)
        profile = np.sqrt(np.clip(1.0 - (dist / (r + 0.5)) ** 2, 0.0, 1.0))
        if r >= 2.5:  # central light reflex: a bright stripe along the axis of large vessels
            profile = profile * (1.0 - 0.55 * np.exp(-((dist / (0.28 * r)) ** 2)))
        darkness = np.maximum(darkness, contrast * profile)
    return vessel, darkness


def _blob(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.ogrid[0 : shape[0], 0 : shape[1]]
    return np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) ** 2)


#: Simulated fundus cameras (site shift for transfer experiments, docs/fine-tuning.md), the same ids as the other
#: phantoms': ``illumination``, the flash's exposure times an extra radial falloff ``1 - vignette * rho**2`` (rho = 1 at
#: the FOV edge); ``gains``, the sensor's R, G, B white balance; ``gamma``, its response curve (below 1 lifts the dark
#: vessels towards the background, i.e. lowers vessel contrast). A pixel of linear colour c becomes
#: ``(exposure * (1 - vignette * rho**2) * gain * c) ** gamma``, applied before the optical blur and sensor noise and
#: with no random number, so every camera sees the same retina and noise draws. "A" is the default and leaves every
#: image as before.
SCANNERS = {"A": {"exposure": 1.0, "vignette": 0.0, "gains": (1.0, 1.0, 1.0), "gamma": 1.0},
            "B": {"exposure": 1.0, "vignette": 0.3, "gains": (0.85, 1.05, 1.3), "gamma": 0.8},
            "C": {"exposure": 0.8, "vignette": 0.0, "gains": (1.15, 0.9, 0.75), "gamma": 1.3}}


def apply_scanner(image: np.ndarray, rho: np.ndarray, scanner: str = "A") -> np.ndarray:
    """A noise-free linear RGB image ``(H, W, 3)`` as camera ``scanner`` records it (formula at :data:`SCANNERS`);
    ``rho`` ``(H, W)`` is the distance from the image centre over the FOV radius. The same array, untouched, for "A".

    Raises:
        ValueError: an unknown scanner.
    """
    r = scanners.scanner_response(SCANNERS, scanner)
    if r["exposure"] == 1.0 and r["vignette"] == 0.0 and r["gamma"] == 1.0 and tuple(r["gains"]) == (1.0, 1.0, 1.0):
        return image
    light = r["exposure"] * np.clip(1.0 - r["vignette"] * np.asarray(rho) ** 2, 0.0, None)
    return np.power(np.clip(image * light[..., None] * np.asarray(r["gains"])[None, None, :], 0.0, None), r["gamma"])


def synth_fundus(rng: np.random.Generator, height: int = 584, width: int = 565, scanner: str = "A"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic fundus photograph.

    Args:
        rng: the random generator (all randomness comes from it).
        height, width: image size in pixels (DRIVE: 584 x 565); at least 32 each.
        scanner: the simulated camera (:data:`SCANNERS`, :func:`apply_scanner`); the retina (vessels, FOV, lesions)
            and the random draws do not depend on it.

    Returns:
        ``(rgb, vessel, fov)``: ``rgb`` uint8 HxWx3, ``vessel`` and ``fov`` uint8 HxW with values 0 and 255.

    Raises:
        ValueError: a size below 32 or an unknown scanner.
    """
    scanners.scanner_response(SCANNERS, scanner)
    if int(height) < 32 or int(width) < 32:
        raise ValueError(f"image size must be at least 32x32, got height={height}, width={width}.")
    height, width = int(height), int(width)
    shape, scale = (height, width), min(height, width) / 565.0
    fov = fov_disc(height, width)
    cy, cx, fov_r = (height - 1) / 2, (width - 1) / 2, 0.478 * min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    side = 1.0 if rng.random() < 0.5 else -1.0  # left or right eye
    od_y, od_x = cy + rng.uniform(-0.08, 0.08) * fov_r, cx + side * rng.uniform(0.5, 0.62) * fov_r
    od_r = max(3.0, 0.075 * min(height, width) * rng.uniform(0.9, 1.1))
    mac_y, mac_x = cy + rng.uniform(-0.05, 0.05) * fov_r, cx - side * rng.uniform(0.0, 0.1) * fov_r
    # background: orange-red fundus with vignetting, an illumination gradient and smooth texture
    colour = np.array([0.78, 0.36, 0.13]) * rng.uniform(0.88, 1.12, size=3)
    rho = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / fov_r
    vignette = 1.0 - rng.uniform(0.35, 0.55) * rho**2
    theta = rng.uniform(0, 2 * math.pi)
    gradient = 1.0 + rng.uniform(0.08, 0.2) * ((yy - cy) * math.sin(theta) + (xx - cx) * math.cos(theta)) / fov_r
    texture = 1.0 + 0.06 * ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(2.0, 12 * scale)) * max(
        2.0, 12 * scale)
    shade = vignette * gradient * texture
    img = colour[None, None, :] * shade[..., None]
    macula = _blob(shape, mac_y, mac_x, 2.2 * od_r, 2.2 * od_r)
    img *= (1.0 - 0.35 * macula)[..., None]
    disc = _blob(shape, od_y, od_x, od_r, od_r * rng.uniform(0.85, 1.0))
    img = img * (1 - disc[..., None]) + np.array([0.98, 0.8, 0.5])[None, None, :] * disc[..., None]
    # vessel tree from the optic disc: superior/inferior temporal arcades and nasal branches
    trunk_r = max(1.5, 4.5 * scale * rng.uniform(0.9, 1.1))
    toward = math.pi if side > 0 else 0.0  # temporal direction (towards the macula)
    trunks = [(toward - 1.3 * side * s + rng.normal(0, 0.1), s * side * 0.0035, 1.0) for s in (1.0, -1.0)]
    trunks += [(toward + math.pi + 0.9 * s + rng.normal(0, 0.15), 0.0, 0.8) for s in (1.0, -1.0)]
    trunks += [(toward + s * rng.uniform(0.2, 0.5), 0.0, 0.6) for s in (1.0, -1.0)]
    samples = np.concatenate([_grow_tree(rng, (od_y, od_x), a, trunk_r * f, c, scale, fov) for a, c, f in trunks])
    if samples.size:  # foveal avascular zone: no vessels near the macula centre
        keep = (samples[:, 0] - mac_y) ** 2 + (samples[:, 1] - mac_x) ** 2 > (0.7 * od_r) ** 2
        samples = samples[keep]
    vessel, darkness = _render_vessels(samples, shape)
    img *= 1.0 - darkness[..., None] * np.array([0.35, 1.0, 0.8])[None, None, :]
    _add_lesions(rng, img, fov, scale)
    img = apply_scanner(img, rho, scanner)
    img = ndimage.gaussian_filter(img, sigma=(max(0.5, 0.7 * scale), max(0.5, 0.7 * scale), 0))
    img += rng.normal(0, 0.012, size=img.shape)
    img *= fov[..., None]
    img += np.abs(rng.normal(0, 0.008, size=img.shape))  # sensor noise outside the FOV too
    rgb = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return rgb, (vessel & fov).astype(np.uint8) * 255, fov.astype(np.uint8) * 255


def _add_lesions(rng: np.random.Generator, img: np.ndarray, fov: np.ndarray, scale: float) -> None:
    """Haemorrhages and microaneurysms (dark red) and exudates (bright yellow): distractors, not vessels."""
    ys, xs = np.nonzero(fov)
    s = max(scale, 0.25)
    for kind, count in (("haem", rng.integers(1, 6)), ("micro", rng.integers(0, 8)), ("exudate", rng.integers(1, 9))):
        for _ in range(int(count)):
            i = rng.integers(0, ys.size)
            if kind == "haem":
                r = rng.uniform(3, 10) * s
                blob = _blob(fov.shape, ys[i], xs[i], r, r * rng.uniform(0.6, 1.4))
                img *= (1.0 - blob[..., None] * np.array([0.25, 0.55, 0.5]) * rng.uniform(0.6, 1.0))
            elif kind == "micro":
                r = rng.uniform(1.2, 2.5) * s
                blob = _blob(fov.shape, ys[i], xs[i], r, r)
                img *= (1.0 - blob[..., None] * np.array([0.2, 0.5, 0.45]))
            else:
                r = rng.uniform(1.5, 5) * s
                blob = _blob(fov.shape, ys[i], xs[i], r, r * rng.uniform(0.6, 1.5))
                img += blob[..., None] * np.array([0.25, 0.3, 0.05]) * rng.uniform(0.5, 1.0)


def _save(array: np.ndarray, path: Path, fmt: str) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format=fmt)


def case_paths(dataset_dir: str | Path, split: str, number: int) -> dict[str, Path]:
    """The DRIVE file names of image ``number`` in ``split`` ("training" or "test")."""
    suffix = SPLITS[split][0]
    root = Path(str(dataset_dir)) / split
    return {"image": root / "images" / f"{number:02d}_{suffix}.tif",
            "label": root / "1st_manual" / f"{number:02d}_manual1.gif",
            "fov": root / "mask" / f"{number:02d}_{suffix}_mask.gif"}


def write_dataset(dataset_dir: str, num_cases: int = 20, seed: int = 0, height: int = 584, width: int = 565,
                  num_test: int | None = None, scanner: str = "A") -> dict[str, int]:
    """Write a synthetic DRIVE dataset: ``training/`` with ``num_cases`` images and ``test/`` with
    ``max(ceil(num_cases / 2), 8)`` images (or ``num_test``), each with ``images/``, ``1st_manual/`` and ``mask/``.

    Args:
        dataset_dir: target folder (created).
        num_cases: number of training images (at least 1).
        seed: dataset seed; image ``k`` of a split is drawn from its own generator, so the set is reproducible.
        height, width: image size (DRIVE: 584 x 565).
        num_test: number of test images, default ``max(ceil(num_cases / 2), 8)``.
        scanner: the simulated camera of every image (:data:`SCANNERS`: "A" default, "B", "C"): a site shift; the
            vessel and FOV masks are the same for every camera.

    Returns:
        the number of images written per split.

    Raises:
        ValueError: ``num_cases`` < 1, a bad size or an unknown scanner (before anything is written).
    """
    scanners.scanner_response(SCANNERS, scanner)
    num_cases = int(num_cases)
    if num_cases < 1:
        raise ValueError(f"num_cases must be at least 1, got {num_cases}.")
    counts = {"training": num_cases, "test": int(num_test) if num_test is not None else max(-(-num_cases // 2), 8)}
    for split_index, (split, count) in enumerate(counts.items()):
        first = SPLITS[split][1]
        for k in range(count):
            rng = np.random.default_rng([int(seed), split_index, k])
            rgb, vessel, fov = synth_fundus(rng, int(height), int(width), str(scanner))
            paths = case_paths(dataset_dir, split, first + k)
            _save(rgb, paths["image"], "TIFF")
            _save(vessel, paths["label"], "GIF")
            _save(fov, paths["fov"], "GIF")
    logger.info("wrote synthetic DRIVE dataset to %s: %s", dataset_dir, counts)
    return counts
