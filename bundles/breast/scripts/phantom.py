"""Synthetic CBIS-DDSM: mammograms with one mass each, as DICOM files described by the mass CSVs.

Each image is a compressed breast seen from the side: a silhouette against air with a thin skin line, a pectoral
muscle wedge on MLO views, fibroglandular parenchyma (band-limited random texture) and a mass. Malignancy shows in
the mass's **shape and margin** only: benign masses are round/oval and circumscribed (sharp edge), malignant ones
irregular, spiculated and ill-defined (blurred edge). Size and contrast come from the same distributions for both
classes (so neither size nor brightness decides), ~4 % of each class borrow the other's look (ambiguous cases), and
bright calcification dots appear in both classes as distractors.

Images are written as 12-, 14- or 16-bit DICOM with RescaleSlope/Intercept, a quarter of patients as MONOCHROME1,
ROI masks as 8-bit 0/255 images and cropped images as CBIS-DDSM's ROI crops, at the CBIS-DDSM paths
``Mass-{Training,Test}_P_NNNNN_{LEFT,RIGHT}_{CC,MLO}[_<abnormality id>]/<uid>/<uid>/00000N.dcm``. Deterministic by
seed (one explicit ``numpy.random.Generator``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from common import scanners
from common.io import write_csv
from scripts.dicom import write_dicom
from scripts.transforms import crop_box

CSV_COLUMNS = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
               "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
               "image file path", "cropped image file path", "ROI mask file path"]
SPLITS = {"train": "Training", "test": "Test"}


def breast_background(rng: np.random.Generator, shape: tuple[int, int], view: str, density: int) -> tuple:
    """Breast silhouette (chest wall at column 0), skin line, pectoral muscle (MLO) and parenchyma; values ~[0, 1]."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a, b = rng.uniform(0.75, 0.92) * w, rng.uniform(0.40, 0.47) * h
    theta = np.arctan2(yy - h / 2, xx)
    wobble = 1.0 + 0.03 * np.sin(3 * theta + rng.uniform(0, 6.3)) + 0.02 * np.sin(5 * theta + rng.uniform(0, 6.3))
    radius = np.sqrt((xx / a) ** 2 + ((yy - h / 2) / b) ** 2) / wobble
    breast = radius < 1.0
    thickness = np.clip(1.0 - radius, 0, 1) ** 0.35  # compressed breast gets thinner towards the skin
    fine = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    coarse = ndimage.gaussian_filter(rng.standard_normal(shape), 7.0)
    tissue = 0.5 * fine / (fine.std() + 1e-8) + coarse / (coarse.std() + 1e-8)
    glandular = 1.0 / (1.0 + np.exp(-(tissue - 1.2 + 0.35 * density)))  # density 1..4: fatty .. extremely dense
    image = breast * thickness * (0.30 + 0.30 * glandular)
    skin = breast & (radius > 0.975)
    image[skin] += 0.25
    if view == "MLO":
        muscle = breast & (xx / (rng.uniform(0.25, 0.35) * w) + yy / (rng.uniform(0.45, 0.6) * h) < 1.0)
        image[muscle] = 0.75 + 0.05 * fine[muscle] / (fine.std() + 1e-8)
    return image, breast & (radius < 0.8), xx, yy


def mass_shape(rng: np.random.Generator, malignant: bool, xx: np.ndarray, yy: np.ndarray, centre: tuple,
               area: float) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Mass body (binary), its rendered soft profile, and the CBIS-DDSM shape and margin labels."""
    ambiguous = rng.random() < 0.04
    looks_malignant = malignant != ambiguous
    dy, dx = yy - centre[0], xx - centre[1]
    phi = np.arctan2(dy, dx)
    if looks_malignant:
        harmonics = [(k, rng.uniform(0.06, 0.16), rng.uniform(0, 6.3)) for k in rng.choice(np.arange(3, 9), 3, False)]
        stretch, angle = rng.uniform(1.0, 1.3), rng.uniform(0, np.pi)
        shape, margin, edge = "IRREGULAR", str(rng.choice(["SPICULATED", "ILL_DEFINED", "MICROLOBULATED"])), 1.8
    else:
        harmonics = [(2, rng.uniform(0.0, 0.04), rng.uniform(0, 6.3))]
        stretch, angle = rng.uniform(1.0, 1.6), rng.uniform(0, np.pi)
        shape, margin, edge = str(rng.choice(["ROUND", "OVAL"])), "CIRCUMSCRIBED", 0.6
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / np.sqrt(stretch)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) * np.sqrt(stretch)
    dist = np.hypot(u, v) / (1.0 + sum(amp * np.cos(k * phi + ph) for k, amp, ph in harmonics))
    r0 = np.sqrt(area / np.pi)
    body = dist < r0 * np.sqrt(area / max(float((dist < r0).sum()), 1.0))  # rescale so the body has ~`area` pixels
    dome = np.clip(1.0 - (dist / (r0 * 1.15)) ** 2, 0, 1) ** 0.3
    profile = ndimage.gaussian_filter(np.maximum(body.astype(float), body * dome), edge * rng.uniform(0.8, 1.25))
    if looks_malignant and margin == "SPICULATED" or looks_malignant and rng.random() < 0.5:
        profile = np.maximum(profile, spicules(rng, xx, yy, centre, r0))
    return body, profile, shape, margin


def spicules(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, centre: tuple, r0: float) -> np.ndarray:
    """Thin straight lines radiating from the mass (spiculation), fading with distance."""
    out = np.zeros_like(xx)
    for angle in rng.uniform(0, 2 * np.pi, int(rng.integers(5, 12))):
        length = r0 * rng.uniform(1.6, 2.6)
        along = (xx - centre[1]) * np.cos(angle) + (yy - centre[0]) * np.sin(angle)
        across = -(xx - centre[1]) * np.sin(angle) + (yy - centre[0]) * np.cos(angle)
        line = (np.abs(across) < 0.7) & (along > 0) & (along < length)
        out = np.maximum(out, line * np.clip(1.0 - along / length, 0, 1) * 0.8)
    return ndimage.gaussian_filter(out, 0.6)


def calcifications(rng: np.random.Generator, image: np.ndarray, inside: np.ndarray) -> None:
    """Add 0-8 bright specks (benign-looking calcifications) anywhere in the breast, in place."""
    ys, xs = np.nonzero(inside)
    for i in rng.choice(ys.size, int(rng.integers(0, 9)), replace=False):
        y, x = ys[i], xs[i]
        image[y : y + int(rng.integers(1, 3)), x : x + int(rng.integers(1, 3))] += rng.uniform(0.3, 0.6)


# Simulated scanners (site shift for transfer experiments, docs/fine-tuning.md): detector intensity response (a gamma
# on the [0, 1] image), resolution (Gaussian blur of the detector, sigma in pixels) and quantum noise (SD). "A" is the
# default and leaves every image as before; "B" is a softer, noisier, lower-contrast unit; "C" a sharper, harder one.
SCANNERS = {"A": {"gamma": 1.0, "blur": 0.0, "noise": 0.012},
            "B": {"gamma": 0.6, "blur": 1.5, "noise": 0.035},
            "C": {"gamma": 1.5, "blur": 0.0, "noise": 0.006}}


def render_case(rng: np.random.Generator, malignant: bool, view: str, shape: tuple[int, int],
                scanner: str = "A") -> dict:
    """One mammogram with one mass: display image in [0, 1], ROI mask and CBIS-DDSM descriptors, as seen by the
    simulated ``scanner`` (:data:`SCANNERS`; the random draws do not depend on it, so scanners see the same anatomy)."""
    response = scanners.scanner_response(SCANNERS, scanner)
    density = int(rng.integers(1, 5))
    image, inner, xx, yy = breast_background(rng, shape, view, density)
    area = float(np.pi * rng.uniform(7.0, 15.0) ** 2)
    ys, xs = np.nonzero(inner & (xx > 0.15 * shape[1]) & (xx < 0.6 * shape[1]))
    k = int(rng.integers(ys.size))
    body, profile, mass_shape_label, margin = mass_shape(rng, malignant, xx, yy, (ys[k], xs[k]), area)
    image = image + rng.uniform(0.12, 0.3) * profile * (image > 0)
    calcifications(rng, image, inner)
    if response["blur"] > 0:
        image = ndimage.gaussian_filter(image, response["blur"])
    image = image + rng.normal(0.0, response["noise"], shape) * (image > 0)
    roi = ndimage.binary_dilation(body, iterations=2)
    image = np.clip(image / 1.6, 0.0, 1.0)
    if response["gamma"] != 1.0:
        image = image ** response["gamma"]
    return {"image": image, "roi": roi, "density": density, "shape": mass_shape_label,
            "margin": margin}


def _uid(rng: np.random.Generator) -> str:
    return "1.3.6.1.4.1.9590.100.1.2." + "".join(str(d) for d in rng.integers(0, 10, 39))


def dicom_encoding(rng: np.random.Generator) -> dict:
    """Bit depth, photometric interpretation and rescale of one patient's images (as scanners/digitisers differ)."""
    return {"bits_stored": int(rng.choice([12, 14, 16])),
            "photometric": "MONOCHROME1" if rng.random() < 0.25 else "MONOCHROME2",
            "slope": float(rng.choice([1.0, 0.5, 2.0])), "intercept": float(rng.choice([0.0, -1024.0, 100.0]))}


def write_case(dataset_dir: Path, rng: np.random.Generator, prefix: str, patient: str, side: str, view: str,
               malignant: bool, shape: tuple[int, int], crop_margin: float, encoding: dict,
               scanner: str = "A") -> dict:
    """Render and write one mass (full image, ROI mask, cropped image); return its CSV row."""
    case = render_case(rng, malignant, view, shape, scanner)
    full_dir = f"{prefix}_{patient}_{side}_{view}"
    study, roi_study = _uid(rng), _uid(rng)
    paths = {"image file path": f"{full_dir}/{study}/{_uid(rng)}/000000.dcm",
             "cropped image file path": f"{full_dir}_1/{roi_study}/{_uid(rng)}/000000.dcm",
             "ROI mask file path": f"{full_dir}_1/{roi_study}/{_uid(rng)}/000001.dcm"}
    smax = 2 ** encoding["bits_stored"] - 1
    values = np.rint(case["image"] * 0.9 * smax) * encoding["slope"] + encoding["intercept"]
    y0, y1, x0, x1 = crop_box(case["roi"], crop_margin)
    common = {"patient_id": patient, "laterality": side[0], "view": view}
    enc = {k: encoding[k] for k in ("bits_stored", "photometric", "slope", "intercept")}
    write_dicom(dataset_dir / paths["image file path"], values, **enc, **common,
                uid_seed=paths["image file path"], description="full mammogram images")
    write_dicom(dataset_dir / paths["cropped image file path"], values[y0:y1, x0:x1], **enc, **common,
                uid_seed=paths["cropped image file path"], description="cropped images")
    write_dicom(dataset_dir / paths["ROI mask file path"], case["roi"].astype(np.uint8) * 255, bits_stored=8,
                **common, uid_seed=paths["ROI mask file path"], description="ROI mask images")
    if malignant:
        pathology = "MALIGNANT"
    else:
        pathology = "BENIGN_WITHOUT_CALLBACK" if rng.random() < 0.25 else "BENIGN"
    assessment = int(rng.integers(4, 6)) if malignant else int(rng.integers(2, 5))
    return {"patient_id": patient, "breast_density": case["density"], "left or right breast": side,
            "image view": view, "abnormality id": 1, "abnormality type": "mass", "mass shape": case["shape"],
            "mass margins": case["margin"], "assessment": assessment, "pathology": pathology,
            "subtlety": int(rng.integers(2, 6)), **paths,
            "ROI mask file path": paths["ROI mask file path"] + "\n"}  # real CBIS-DDSM cells end in a newline


def write_split(dataset_dir: Path, rng: np.random.Generator, split: str, num_masses: int, first_patient: int,
                shape: tuple[int, int], crop_margin: float, malignant_fraction: float, scanner: str = "A") -> int:
    """Write ``num_masses`` masses (one or two views per patient) and the split's CSV; return the next patient no."""
    rows, patient_no = [], first_patient
    while len(rows) < num_masses:
        patient, side = f"P_{patient_no:05d}", str(rng.choice(["LEFT", "RIGHT"]))
        malignant, encoding = bool(rng.random() < malignant_fraction), dicom_encoding(rng)
        views = ["CC", "MLO"][: int(rng.integers(1, 3))][: num_masses - len(rows)]
        for view in views:
            rows.append(write_case(dataset_dir, rng, f"Mass-{SPLITS[split]}", patient, side, view, malignant,
                                   shape, crop_margin, encoding, scanner))
        patient_no += int(rng.integers(1, 4))
    if split == "test":  # the real test CSV spells this column with a space
        rows = [{("breast density" if k == "breast_density" else k): v for k, v in r.items()} for r in rows]
    write_csv(dataset_dir / f"mass_case_description_{split}_set.csv", rows)
    return patient_no


def synthesize(dataset_dir: str | os.PathLike, num_cases: int = 400, seed: int = 0,
               image_size: tuple[int, int] | list[int] = (256, 192), crop_margin: float = 0.25,
               malignant_fraction: float = 0.45, scanner: str = "A") -> str:
    """Write a synthetic CBIS-DDSM mass dataset: ``num_cases`` training masses, max(num_cases // 2, 8) test masses.

    Args:
        dataset_dir: output folder (created).
        num_cases: training masses (>= 2).
        seed: the generator's seed.
        image_size: (rows, columns) of the full mammograms (>= 128 x 96).
        crop_margin: margin of the cropped images around the ROI box, as a fraction of its side.
        malignant_fraction: probability that a patient's mass is malignant.
        scanner: the simulated scanner of every image (:data:`SCANNERS`: "A" default, "B", "C"): a site shift.

    Returns:
        ``dataset_dir`` as a string.

    Raises:
        ValueError: bad sizes or fractions, or an unknown scanner.
    """
    if not 0.0 <= crop_margin <= 2.0:
        raise ValueError(f"crop_margin must be in [0, 2], got {crop_margin}.")
    return write_splits(dataset_dir, num_cases, seed, image_size, malignant_fraction, scanner, 2,
                        functools.partial(write_split, crop_margin=crop_margin, malignant_fraction=malignant_fraction,
                                          scanner=scanner))


def write_splits(dataset_dir: str | os.PathLike, num_cases: int, seed: int, image_size: tuple[int, int] | list[int],
                 malignant_fraction: float, scanner: str, min_cases: int, write_split: Callable[..., int]) -> str:
    """Check the settings of a synthetic set (mass or detection), then write its ``train`` split (``num_cases``
    items, patients numbered from 1) and its ``test`` split (max(num_cases // 2, 8) items, the following patients),
    both from one ``numpy.random.default_rng(seed)``; ``write_split(root, rng, split, n, first_patient, shape)``
    writes one split and returns the next patient number.

    Returns:
        ``dataset_dir`` as a string.

    Raises:
        ValueError: ``num_cases < min_cases``, ``image_size`` below 128 x 96 (rows, columns), ``malignant_fraction``
            outside (0, 1), or an unknown ``scanner`` (nothing written).
    """
    scanners.scanner_response(SCANNERS, scanner)
    num_cases, seed = int(num_cases), int(seed)
    shape = (int(image_size[0]), int(image_size[1]))
    if num_cases < min_cases or shape[0] < 128 or shape[1] < 96:
        raise ValueError(f"need num_cases >= {min_cases} and image_size >= [128, 96], got {num_cases} and "
                         f"{list(shape)}.")
    if not 0.0 < malignant_fraction < 1.0:
        raise ValueError(f"malignant_fraction must be in (0, 1), got {malignant_fraction}.")
    root = Path(str(dataset_dir))
    rng = np.random.default_rng(seed)
    next_patient = write_split(root, rng, "train", num_cases, 1, shape)
    write_split(root, rng, "test", max(num_cases // 2, 8), next_patient, shape)
    return str(root)
