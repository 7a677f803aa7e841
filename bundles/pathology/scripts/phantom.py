"""Synthetic PatchCamelyon data set and pyramidal whole-slide TIFFs, in the public layouts.

Writes ``D/camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`` (datasets ``x``: N x 96 x 96 x 3 uint8, ``y``:
N x 1 x 1 x 1 uint8, y = 1 when the centre 32 x 32 region holds tumour, as in PCam) and ``num_slides`` pyramidal tiled
TIFF slides ``D/synthetic_slide_NNN.tif`` with their ground truth ``D/synthetic_slide_NNN_tumour_mask.png`` (level-0
size, 255 = tumour). Train and valid patches come from three simulated staining sites, test patches and slides from a
fourth one (see ``scripts.tissue.SITES``), so evaluation measures generalisation to an unseen laboratory.
Deterministic by seed; every file is written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import tifffile

from common.io import atomic_path, save_png
from scripts.data import PATCH, SPLITS, split_paths
from scripts.tissue import SITES, TEST_SITE, TRAIN_SITES, Blob, Scene, random_blob, render, sample_nuclei

logger = logging.getLogger(__name__)

CENTRE = slice(32, 64)
MARGIN = 12  # nuclei centred this far outside a window may still reach into it


def patch_scene(rng: np.random.Generator, tumour: bool) -> Scene:
    """A 96 x 96 scene: a tumour patch has tumour over its centre (whole patch or a blob), a normal patch none there
    (but 20 % have tumour at the border, as PCam labels only the centre); some have lymphocytes or background."""
    tumour_blobs: list[Blob] = []
    if tumour:
        if rng.random() < 0.6:
            tumour_blobs = [Blob(48, 48, 1e4, 1e4, 0.0)]
        else:
            tumour_blobs = [random_blob(rng, *rng.uniform(40, 56, 2), rng.uniform(30, 60))]
    elif rng.random() < 0.2:
        corner = rng.choice([-1.0, 1.0], 2)
        tumour_blobs = [random_blob(rng, 48 + 75 * corner[0], 48 + 75 * corner[1], rng.uniform(35, 45))]
    lymph = []
    if rng.random() < (0.25 if tumour else 0.5):
        lymph = [random_blob(rng, *rng.uniform(0, 96, 2), rng.uniform(30, 80))]
    tissue = None
    if rng.random() < 0.1:  # a background (glass) region at one border
        side = rng.choice([-1.0, 1.0], 2)
        tissue = [Blob(48 - 30 * side[0], 48 - 30 * side[1], 95, 95, 0.0)]
    return Scene(tissue, tumour_blobs, lymph, tumour_density=float(rng.uniform(0.3, 1.2)))


def make_patch(rng: np.random.Generator, tumour: bool, site_index: int) -> tuple[np.ndarray, int]:
    """One 96 x 96 x 3 uint8 patch and its PCam label (tumour in the centre 32 x 32 region)."""
    image, label, _ = make_patch_with_mask(rng, tumour, site_index)
    return image, label


def make_patch_with_mask(rng: np.random.Generator, tumour: bool, site_index: int
                         ) -> tuple[np.ndarray, int, np.ndarray]:
    """:func:`make_patch` plus the generator's tumour mask of the whole patch, ``(96, 96)`` bool (True = tumour
    tissue), the truth for checking where an explanation points. Draws exactly what :func:`make_patch` draws from
    ``rng`` (the mask needs no random number), so both give the same patch for the same generator state."""
    scene = patch_scene(rng, tumour)
    nuclei = sample_nuclei(rng, scene, -MARGIN, -MARGIN, PATCH + 2 * MARGIN, PATCH + 2 * MARGIN)
    image = render(rng, scene, SITES[site_index], 0, 0, PATCH, PATCH, nuclei, rng,
                   e_level=float(rng.uniform(0.25, 0.45)), jitter=tuple(rng.uniform(0.75, 1.25, 2).tolist()))
    yy, xx = np.mgrid[0:PATCH, 0:PATCH].astype(float)
    mask = scene.maps(yy, xx)[1]
    label = int(mask[CENTRE, CENTRE].any())
    return image, label, mask


def write_pcam(path_x: str | Path, path_y: str | Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one split in the PCam HDF5 layout (dataset ``x`` N x 96 x 96 x 3 uint8, ``y`` N x 1 x 1 x 1 uint8)."""
    images, labels = np.asarray(images, np.uint8), np.asarray(labels, np.uint8).reshape(-1, 1, 1, 1)
    with atomic_path(path_x) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("x", data=images, chunks=(1, *images.shape[1:]))
    with atomic_path(path_y) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("y", data=labels)


def make_split(rng: np.random.Generator, n: int, sites: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``n`` patches, half of them drawn as tumour, from the given staining sites."""
    images, labels = np.empty((n, PATCH, PATCH, 3), np.uint8), np.empty(n, np.uint8)
    for i in range(n):
        images[i], labels[i] = make_patch(rng, tumour=bool(i % 2), site_index=int(sites[rng.integers(len(sites))]))
    return images, labels


def slide_scene(rng: np.random.Generator, size: int) -> Scene:
    """A slide-sized scene: 2-3 tissue pieces on glass, 1-3 tumour regions inside tissue, lymphocyte aggregates."""
    tissue = [random_blob(rng, *rng.uniform(0.3, 0.7, 2) * size, rng.uniform(0.22, 0.32) * size)
              for _ in range(int(rng.integers(2, 4)))]
    tumour = []
    for blob in tissue[: int(rng.integers(1, 4))]:
        tumour.append(random_blob(rng, blob.cy + rng.uniform(-0.3, 0.3) * blob.ry,
                                  blob.cx + rng.uniform(-0.3, 0.3) * blob.rx, rng.uniform(0.06, 0.12) * size))
    lymph = [random_blob(rng, *rng.uniform(0.2, 0.8, 2) * size, rng.uniform(0.02, 0.05) * size) for _ in range(4)]
    return Scene(tissue, tumour, lymph, tumour_density=1.0)


def render_slide(seed: int, index: int, size: int, tile: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """RGB level-0 image ``[size, size, 3]`` and tumour mask of synthetic slide ``index``, rendered tile by tile
    (nuclei of neighbouring tiles are drawn across tile borders, the stroma texture is seamless)."""
    scene = slide_scene(np.random.default_rng([seed, index, 0]), size)
    image = np.empty((size, size, 3), np.uint8)
    n_tiles = -(-size // tile)
    nuclei = {(i, j): sample_nuclei(np.random.default_rng([seed, index, 1, i, j]), scene, i * tile, j * tile,
                                    min(tile, size - i * tile), min(tile, size - j * tile))
              for i in range(n_tiles) for j in range(n_tiles)}
    for i in range(n_tiles):
        for j in range(n_tiles):
            near = [nuclei[(a, b)] for a in (i - 1, i, i + 1) for b in (j - 1, j, j + 1) if (a, b) in nuclei]
            h, w = min(tile, size - i * tile), min(tile, size - j * tile)
            image[i * tile:i * tile + h, j * tile:j * tile + w] = render(
                np.random.default_rng([seed, index, 2, i, j]), scene, SITES[TEST_SITE], i * tile, j * tile, h, w,
                np.concatenate(near), np.random.default_rng([seed, index, 3]))
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    return image, scene.maps(yy, xx)[1]


def write_pyramid(path: str | Path, image: np.ndarray, mpp: float = 0.972, tile: int = 256) -> None:
    """Write ``image`` as a tiled pyramidal TIFF: level 0 and 2x box-filtered levels as top-level pages (reduced
    resolution ones marked NewSubfileType = 1), the form MONAI's ``WSIReader(backend="tifffile")`` reads."""
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tif:
        level, factor = image, 1
        while True:
            tif.write(level, photometric="rgb", tile=(tile, tile), subfiletype=0 if factor == 1 else 1,
                      compression="zlib", compressionargs={"level": 1},
                      resolution=(1e4 / (mpp * factor), 1e4 / (mpp * factor)), resolutionunit="CENTIMETER")
            if min(level.shape[:2]) < 2 * tile:
                break
            h, w = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
            level = level[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
            factor *= 2


def synthesize(dataset_dir: str | Path, num_cases: int = 2000, seed: int = 0, num_slides: int = 1,
               slide_size: int = 2048) -> dict[str, int]:
    """Write the synthetic PCam splits (``num_cases`` training patches; valid and test get half as many, at least 8)
    and ``num_slides`` slides of ``slide_size`` pixels square under ``dataset_dir``; return the counts written."""
    num_cases, seed, num_slides, slide_size = int(num_cases), int(seed), int(num_slides), int(slide_size)
    if num_cases < 2:
        raise ValueError(f"num_cases must be at least 2 (both classes), got {num_cases}.")
    if num_slides < 0 or slide_size < 256 or slide_size % 16:
        raise ValueError(f"need num_slides >= 0 and slide_size >= 256, a multiple of 16; "
                         f"got {num_slides}, {slide_size}.")
    dataset_dir = Path(str(dataset_dir))
    counts = {"train": num_cases, "valid": max(num_cases // 2, 8), "test": max(num_cases // 2, 8)}
    for k, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, k])
        sites = (TEST_SITE,) if split == "test" else TRAIN_SITES
        images, labels = make_split(rng, counts[split], sites)
        write_pcam(*split_paths(dataset_dir, split), images, labels)
        logger.info("wrote %d %s patches to %s", counts[split], split, dataset_dir)
    for index in range(num_slides):
        image, mask = render_slide(seed, index, slide_size)
        stem = dataset_dir / f"synthetic_slide_{index:03d}"
        save_png(mask.astype(np.uint8) * 255, f"{stem}_tumour_mask.png")
        write_pyramid(f"{stem}.tif", image)
        logger.info("wrote slide %s.tif (%d x %d)", stem, slide_size, slide_size)
    counts["slides"] = num_slides
    return counts
