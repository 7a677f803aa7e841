"""Synthetic BraTS-layout brain tumour cases built on the MNI152 (2009c) template that ships inside nilearn.

Each case is a head (MNI152 grey matter, white matter and CSF, plus a synthetic skull and scalp) warped by a random
affine, with one glioma-like tumour of random position, size and irregular shape. The tumour has the BraTS
sub-regions, labelled as in BraTS 2021: 1 necrotic core (NCR), 2 oedema (ED), 4 enhancing tumour (ET, a rim
around the core). No single sequence separates them:

=========  =====  ======  =====  =====  =====  =====  =====  ======
sequence   WM     GM      CSF    NCR    ED     ET     WMH    vessel
=========  =====  ======  =====  =====  =====  =====  =====  ======
T1         0.85   0.60    0.20   0.25   0.48   0.58   0.66   0.30
T1ce       0.85   0.60    0.20   0.25   0.48   1.25   0.66   1.20
T2         0.35   0.55    1.00   0.92   0.80   0.62   0.80   0.50
FLAIR      0.45   0.62    0.12   0.40   0.88   0.75   0.90   0.30
=========  =====  ======  =====  =====  =====  =====  =====  ======

Oedema is bright on FLAIR and T2 but not on T1ce; ET is like grey matter except on T1ce; the core is dark on T1 and
T1ce and bright on T2 (like CSF, so it is told apart by its place inside the enhancing rim). Unlabelled mimics defeat
per-voxel thresholds: white-matter hyperintensities (WMH) look like oedema, enhancing meninges and choroid plexus
("vessel") look like ET. Then the simulated scanner's contrast and site bias (``scanner``, :data:`SCANNERS`; "A"
changes nothing), a smooth multiplicative bias field, Rician noise and a per-case, per-sequence intensity scale are
applied. Files are written in the BraTS 2021 layout
``D/BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz`` with an LPS-like affine (x and y axes flipped,
as in the released BraTS files), so the bundle's orientation handling is exercised. Everything is seeded: case ``i``
of seed ``s`` depends only on ``(s, i)`` and the sizes, never on global random state.

If the nilearn template cannot be loaded offline, an analytic head (nested ellipsoids) is used instead and a
warning says so.
"""

from __future__ import annotations

import argparse
import functools
import logging
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

from common import scanners
from common.io import save_nifti

logger = logging.getLogger(__name__)

SEQUENCES = ("t1", "t1ce", "t2", "flair")
#: tissue → intensity per sequence (t1, t1ce, t2, flair), before bias, noise and scaling
INTENSITY = {
    "wm": (0.85, 0.85, 0.35, 0.45),
    "gm": (0.60, 0.60, 0.55, 0.62),
    "csf": (0.20, 0.20, 1.00, 0.12),
    "skull": (0.06, 0.06, 0.06, 0.05),
    "scalp": (0.95, 0.95, 0.60, 0.70),
    "ncr": (0.25, 0.25, 0.92, 0.40),
    "ed": (0.48, 0.48, 0.80, 0.88),
    "et": (0.58, 1.25, 0.62, 0.75),
    "wmh": (0.66, 0.66, 0.80, 0.90),  # non-tumour white-matter hyperintensities: oedema-like on FLAIR and T2
    "vessel": (0.30, 1.20, 0.50, 0.30),  # enhancing meninges, vessels and choroid plexus: ET-like on T1ce
}
#: Simulated scanners (site shift for transfer experiments, docs/fine-tuning.md), the same ids as the breast
#: phantom's: ``contrast``, an exponent on the noise-free tissue intensities (below 1 flattens the tissue contrast,
#: as a different sequence timing does; intensities lie in [0, 1.25]); ``bias``, the strength of a site-wide
#: multiplicative field ``exp(bias * u)`` with ``u`` running from -1 to 1 across the field of view along ``axis``
#: (0 = x, left-right; 2 = z, inferior-superior), as a receive coil's sensitivity profile. Both act before each
#: case's own random bias field and noise, and use no random numbers, so every scanner sees the same anatomy and
#: noise draws. "A" is the default and leaves every image as before.
SCANNERS = {"A": {"contrast": 1.0, "bias": 0.0, "axis": 0},
            "B": {"contrast": 0.6, "bias": 0.4, "axis": 0},
            "C": {"contrast": 1.5, "bias": -0.3, "axis": 2}}


def apply_scanner(image: np.ndarray, scanner: str = "A") -> np.ndarray:
    """A noise-free 3D intensity image as ``scanner`` sees it: ``image ** contrast * exp(bias * u)`` (see
    :data:`SCANNERS`, :func:`common.scanners.contrast_and_bias`); the same array, untouched, for scanner "A".
    float32, the input's shape.

    Raises:
        ValueError: an unknown scanner.
    """
    response = scanners.scanner_response(SCANNERS, scanner)
    axis, n = response["axis"], image.shape[response["axis"]]
    u = np.linspace(-1.0, 1.0, n).reshape([n if a == axis else 1 for a in range(image.ndim)])
    return scanners.contrast_and_bias(image, response["contrast"], response["bias"], u)


#: field of view in MNI world coordinates (mm): the brain plus a skull and scalp shell
FOV_MM = ((-84.0, 84.0), (-120.0, 86.0), (-78.0, 96.0))


def grid(spacing: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of the phantom grid at isotropic ``spacing`` (mm) covering :data:`FOV_MM`."""
    if not spacing > 0:
        raise ValueError(f"spacing must be positive (mm), got {spacing}.")
    shape = tuple(int(round((hi - lo) / spacing)) for lo, hi in FOV_MM)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [lo for lo, _ in FOV_MM]
    return shape, affine  # type: ignore[return-value]


@functools.lru_cache(maxsize=2)
def _template(resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """MNI152 grey matter, white matter, brain mask and their affine from nilearn's packaged files (no download)."""
    try:
        from nilearn import datasets

        gm_img = datasets.load_mni152_gm_template(resolution=resolution)
        wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution).dataobj, dtype=np.float32)
        mask = np.asarray(datasets.load_mni152_brain_mask(resolution=resolution).dataobj, dtype=np.float32)
        return np.asarray(gm_img.dataobj, dtype=np.float32), wm, mask, np.asarray(gm_img.affine)
    except Exception as e:  # noqa: BLE001 - any failure (no nilearn, would download) falls back to analytic shapes
        warnings.warn(f"MNI152 template not available offline ({e}); using an analytic head phantom.", stacklevel=2)
        return None


def _random_affine(rng: np.random.Generator) -> np.ndarray:
    """A small random rotation, anisotropic scaling and translation (world → world, mm)."""
    angles = rng.uniform(-0.12, 0.12, size=3)
    rot = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = np.cos(a), np.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag(rng.uniform(0.92, 1.08, size=3))
    m[:3, 3] = rng.uniform(-4.0, 4.0, size=3)
    return m


def _anatomy(shape: tuple[int, int, int], affine: np.ndarray, spacing: float,
             rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Tissue fractions (gm, wm, csf, skull, scalp) of one randomly warped head on the target grid."""
    warp = _random_affine(rng)
    template = _template(1 if spacing < 2.0 else 2)
    if template is not None:
        gm_t, wm_t, mask_t, aff_t = template
        # target voxel → world → (random warp) → template voxel
        m = np.linalg.inv(aff_t) @ warp @ affine
        sample = functools.partial(ndimage.affine_transform, matrix=m[:3, :3], offset=m[:3, 3], output_shape=shape,
                                   order=1, mode="constant", cval=0.0)
        gm, wm, mask = sample(gm_t), sample(wm_t), sample(mask_t)
    else:
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
        world = (warp @ affine @ np.c_[idx, np.ones(len(idx))].T)[:3].T.reshape(*shape, 3)
        r = np.sqrt((world[..., 0] / 70) ** 2 + ((world[..., 1] + 18) / 86) ** 2 + ((world[..., 2] - 10) / 72) ** 2)
        mask = (r < 1).astype(np.float32)
        wm = np.clip((0.75 - r) / 0.1, 0, 1).astype(np.float32)
        gm = np.clip(mask - wm, 0, 1) * (r < 0.95)
    brain = mask > 0.5
    csf = np.clip(mask - gm - wm, 0.0, 1.0) * brain
    dist = ndimage.distance_transform_edt(~brain, sampling=spacing)
    outer_csf = ((dist > 0) & (dist <= 2.5)).astype(np.float32)
    skull = ((dist > 2.5) & (dist <= 8.0)).astype(np.float32)
    scalp = ((dist > 8.0) & (dist <= 12.0)).astype(np.float32)
    return {"gm": gm * brain, "wm": wm * brain, "csf": csf + outer_csf, "skull": skull, "scalp": scalp}


@functools.lru_cache(maxsize=32)
def _spline_upsampling(cells: int, n: int) -> np.ndarray:
    """The ``(n, cells)`` matrix of :func:`scipy.ndimage.zoom` (cubic spline, ``mode="nearest"``) from ``cells`` to
    ``n`` samples along one axis: the zoom of each unit vector."""
    return ndimage.zoom(np.eye(cells), [n / cells, 1.0], order=3, mode="nearest")


def _smooth_noise(shape: tuple[int, int, int], rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    """A smooth random field in about [-1, 1]: coarse Gaussian noise upsampled with cubic splines.

    The same field as ``ndimage.zoom(coarse, [n / cells for n in shape], order=3, mode="nearest")`` (to ~1e-14),
    computed axis by axis: the cubic B-spline prefilter and interpolation are tensor products, so the 3D zoom is the
    product of three 1D zoom matrices, which is 15-30x faster than the 3D zoom (0.12 s → 0.01 s per field at 3 mm).
    """
    coarse = rng.standard_normal((cells, cells, cells))
    mx, my, mz = (_spline_upsampling(cells, n) for n in shape)
    field = np.einsum("ia,jb,kc,abc->ijk", mx, my, mz, coarse, optimize=True)
    return (field / (np.abs(field).max() + 1e-8)).astype(np.float32)


def _tumour(anatomy: dict[str, np.ndarray], spacing: float, rng: np.random.Generator) -> np.ndarray:
    """BraTS label map (0, 1 NCR, 2 ED, 4 ET) of one irregular tumour placed in the white matter."""
    shape = anatomy["wm"].shape
    brain = (anatomy["wm"] + anatomy["gm"]) > 0.5
    interior = ndimage.binary_erosion(brain, iterations=max(1, int(round(10.0 / spacing))))
    candidates = np.argwhere(interior & (anatomy["wm"] > 0.5))
    if len(candidates) == 0:
        candidates = np.argwhere(brain)
    centre = candidates[rng.integers(len(candidates))]
    radii = rng.uniform(18.0, 34.0) * rng.uniform(0.8, 1.2, size=3) / spacing  # in voxels
    coords = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    r = np.sqrt(sum(((c - c0) / rad) ** 2 for c, c0, rad in zip(coords, centre, radii)))
    f_wt = r * (1.0 + 0.30 * _smooth_noise(shape, rng))
    f_tc = r * (1.0 + 0.25 * _smooth_noise(shape, rng))
    k_tc = rng.uniform(0.5, 0.8)
    k_ncr = k_tc * rng.uniform(0.45, 0.75) if rng.random() < 0.85 else 0.0
    has_et = rng.random() >= 0.1
    label = np.zeros(shape, dtype=np.uint8)
    label[(f_wt < 1.0) & brain] = 2
    label[f_tc < k_tc] = 4 if has_et else 1
    label[f_tc < k_ncr] = 1
    return label


def _mimics(anatomy: dict[str, np.ndarray], label: np.ndarray, spacing: float,
            rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Normal findings that fool intensity thresholds: FLAIR-bright white-matter lesions and T1ce-bright vessels.

    6-14 white-matter hyperintensities (4-10 mm radius, away from the tumour) look like oedema on FLAIR and T2;
    patchy enhancement of the meninges and the choroid plexus looks like enhancing tumour on T1ce. Neither is
    labelled: telling them apart needs shape and context (a tumour has a core, a rim and surrounding oedema).
    """
    shape = label.shape
    coords = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    wmh = np.zeros(shape, dtype=bool)
    candidates = np.argwhere((anatomy["wm"] > 0.6) & (ndimage.distance_transform_edt(label == 0) * spacing > 12.0))
    for _ in range(int(rng.integers(6, 15)) if len(candidates) else 0):
        centre = candidates[rng.integers(len(candidates))]
        radius = rng.uniform(4.0, 10.0) / spacing
        wmh |= sum(((c - c0) / radius) ** 2 for c, c0 in zip(coords, centre)) < 1.0
    csf = anatomy["csf"] > 0.5
    brain = (anatomy["wm"] + anatomy["gm"]) > 0.5
    surface = (brain | csf) & ~ndimage.binary_erosion(brain | csf, iterations=max(1, int(round(5.0 / spacing))))
    ventricles = csf & ndimage.binary_erosion(brain | csf, iterations=max(1, int(round(20.0 / spacing))))
    patches = _smooth_noise(shape, rng, cells=8)
    vessel = (surface & (patches > 0.1)) | (ventricles & (patches > -0.2))
    return {"wmh": (wmh & (label == 0)).astype(np.float32), "vessel": (vessel & (label == 0)).astype(np.float32)}


def make_case(seed: int, index: int, spacing: float = 3.0, scanner: str = "A"
              ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """One synthetic case in RAS orientation.

    Args:
        seed: the dataset seed. index: the case index; the case depends only on ``(seed, index, spacing)``.
        spacing: isotropic voxel size in mm (3.0 gives a 56×69×58 grid; 1.0 the full 168×206×174).
        scanner: the simulated scanner (:data:`SCANNERS`, :func:`apply_scanner`); the anatomy, label and noise draws
            do not depend on it.

    Raises:
        ValueError: an unknown scanner.

    Returns:
        ``(images, label, affine)``: the four sequences (float32, by name), the BraTS label map (uint8) and the
        RAS affine.
    """
    scanners.scanner_response(SCANNERS, scanner)
    rng = np.random.default_rng([int(seed), int(index)])
    shape, affine = grid(spacing)
    anatomy = _anatomy(shape, affine, spacing, rng)
    label = _tumour(anatomy, spacing, rng)
    head = sum(anatomy.values()) > 0.05
    fractions = dict(anatomy)
    fractions.update(_mimics(anatomy, label, spacing, rng))
    tumour_mask = label > 0
    for name in ("gm", "wm"):
        fractions[name] = fractions[name] * ~tumour_mask * (1.0 - fractions["wmh"])
    fractions["csf"] = fractions["csf"] * ~tumour_mask * (1.0 - fractions["vessel"])
    for name, value in (("ncr", 1), ("ed", 2), ("et", 4)):
        fractions[name] = (label == value).astype(np.float32)
    sigma = 0.5  # a partial-volume edge of about half a voxel
    fractions = {k: ndimage.gaussian_filter(v, sigma) for k, v in fractions.items()}
    images = {}
    for s, seq in enumerate(SEQUENCES):
        img = np.zeros(shape, dtype=np.float32)
        for tissue, frac in fractions.items():
            texture = 1.0 + 0.06 * _smooth_noise(shape, rng, cells=10)
            img += frac * INTENSITY[tissue][s] * texture
        img = apply_scanner(img, scanner)
        img *= np.exp(0.3 * _smooth_noise(shape, rng, cells=3))  # bias field
        noise_sd = 0.05 * rng.uniform(0.7, 1.3)
        img = np.sqrt((img + noise_sd * rng.standard_normal(shape)) ** 2 + (noise_sd * rng.standard_normal(shape)) ** 2)
        img = img * head * rng.uniform(300.0, 1500.0)  # background stays 0, as in skull-stripped BraTS files
        images[seq] = img.astype(np.float32)
    return images, label, affine


def _to_lps(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip the x and y axes and adjust the affine, so the world position of every voxel stays the same."""
    flipped = np.ascontiguousarray(array[::-1, ::-1, :])
    flip = np.eye(4)
    for axis in (0, 1):
        flip[axis, axis] = -1.0
        flip[axis, 3] = array.shape[axis] - 1
    return flipped, affine @ flip


def case_id(index: int) -> str:
    """The BraTS 2021 case id of case ``index``."""
    return f"BraTS2021_{index:05d}"


def write_case(dataset_dir: str | Path, seed: int, index: int, spacing: float = 3.0, scanner: str = "A") -> Path:
    """Write case ``index`` into ``dataset_dir/BraTS2021_XXXXX/`` (each file atomically); return its folder."""
    images, label, affine = make_case(seed, index, spacing, scanner)
    cid = case_id(index)
    folder = Path(str(dataset_dir)) / cid
    for seq, img in images.items():
        data, aff = _to_lps(np.round(img).astype(np.int16), affine)
        save_nifti(data, aff, folder / f"{cid}_{seq}.nii.gz")
    data, aff = _to_lps(label, affine)
    save_nifti(data, aff, folder / f"{cid}_seg.nii.gz")
    return folder


def write_dataset(dataset_dir: str | Path, num_cases: int = 24, seed: int = 0, spacing: float = 3.0,
                  scanner: str = "A") -> list[Path]:
    """Write ``num_cases`` synthetic cases in the BraTS 2021 layout (one folder of cases: BraTS has no split), as
    seen by the simulated ``scanner`` (:data:`SCANNERS`: "A" default, "B", "C"; a site shift, same anatomy).

    A held-out set is another call with another ``seed`` and ``dataset_dir``.

    Raises:
        ValueError: ``num_cases`` < 1, ``spacing`` not positive or an unknown scanner (before anything is written).
    """
    if int(num_cases) < 1:
        raise ValueError(f"num_cases must be at least 1, got {num_cases}.")
    scanners.scanner_response(SCANNERS, scanner)
    grid(float(spacing))
    dataset_dir = Path(str(dataset_dir))
    logger.info("writing %d synthetic BraTS cases (seed %d, %.1f mm) to %s", num_cases, seed, spacing, dataset_dir)
    return [write_case(dataset_dir, int(seed), i, float(spacing), str(scanner)) for i in range(int(num_cases))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", required=True, help="folder to write the BraTS-layout cases into")
    parser.add_argument("--num_cases", type=int, default=24, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--spacing", type=float, default=3.0, help="isotropic voxel size in mm")
    parser.add_argument("--scanner", default="A", choices=sorted(SCANNERS), help="simulated scanner (site shift)")
    args = parser.parse_args(argv)
    write_dataset(args.dataset_dir, args.num_cases, args.seed, args.spacing, args.scanner)


if __name__ == "__main__":
    main()
