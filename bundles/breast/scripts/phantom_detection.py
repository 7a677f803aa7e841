"""Synthetic CBIS-DDSM for mass **detection**: full mammograms with 0-3 masses each, among look-alikes.

Each image is a breast as in :mod:`scripts.phantom` (silhouette, skin line, pectoral muscle on MLO views, parenchyma)
holding 0-3 masses (probabilities 0.2, 0.4, 0.25, 0.15; benign and malignant by the classifier phantom's shape and
margin statistics: round/oval circumscribed vs irregular, spiculated, ill-defined), 1-3 **dense-tissue look-alikes**
(smooth Gaussian islands of glandular tissue, of the masses' size and contrast but without a mass's edge), and
calcification specks. Mass radii scale with the image width (3-7 % of it), so tiny test images hold masses too.

Layout (CBIS-DDSM): every mass is one row of ``mass_case_description_{train,test}_set.csv`` with its own ROI mask
and cropped image; the rows of one mammogram share its ``image file path`` and number their ``abnormality id``
1, 2, 3. A mammogram without a mass appears only in ``calc_case_description_{train,test}_set.csv`` (as in the real
set, where calcification-only images are the mass-negative images), with a calcification cluster as its ROI.
Images are written as 12/14/16-bit DICOM with rescale slope/intercept, a quarter of patients MONOCHROME1 (reusing
:func:`scripts.phantom.dicom_encoding` and :func:`scripts.dicom.write_dicom`); pixel spacing 0.2 mm.
Deterministic by seed.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from common import scanners
from common.io import write_csv
from scripts.dicom import write_dicom
from scripts.phantom import (
    CSV_COLUMNS,
    SCANNERS,
    SPLITS,
    _uid,
    breast_background,
    calcifications,
    crop_box,
    dicom_encoding,
    mass_shape,
    write_splits,
)

MASS_COUNT_PROBS = (0.2, 0.4, 0.25, 0.15)  # P(0 masses), P(1), P(2), P(3)
CALC_COLUMNS = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
                "abnormality type", "calc type", "calc distribution", "assessment", "pathology", "subtlety",
                "image file path", "cropped image file path", "ROI mask file path"]


def look_alike(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, centre: tuple, r0: float) -> np.ndarray:
    """A dense-tissue island: an elongated smooth Gaussian bump (no plateau, no edge), peak 1."""
    angle, stretch = rng.uniform(0, np.pi), rng.uniform(1.0, 2.0)
    dy, dx = yy - centre[0], xx - centre[1]
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / np.sqrt(stretch)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) * np.sqrt(stretch)
    return np.exp(-(u**2 + v**2) / (2 * (r0 * rng.uniform(0.7, 1.0)) ** 2))


def _place(rng: np.random.Generator, candidates: tuple[np.ndarray, np.ndarray], taken: list[tuple[float, float, float]],
           r0: float) -> tuple[int, int] | None:
    """A centre among ``candidates`` at least (r0 + r_other) * 1.3 away from every centre in ``taken``."""
    ys, xs = candidates
    for _ in range(50):
        k = int(rng.integers(ys.size))
        if all(np.hypot(ys[k] - y, xs[k] - x) > 1.3 * (r0 + r) for y, x, r in taken):
            return int(ys[k]), int(xs[k])
    return None


def render_image(rng: np.random.Generator, pathologies: list[bool], view: str, shape: tuple[int, int],
                 scanner: str = "A") -> dict:
    """One mammogram: display image in [0, 1], one ROI mask per mass (bool, the image's shape), their CBIS-DDSM
    shape/margin labels, and a calcification-cluster ROI (for the calc CSV of a mass-free image)."""
    response = scanners.scanner_response(SCANNERS, scanner)
    density = int(rng.integers(1, 5))
    image, inner, xx, yy = breast_background(rng, shape, view, density)
    h, w = shape
    region = np.nonzero(inner & (xx > 0.12 * w) & (xx < 0.65 * w))
    taken: list[tuple[float, float, float]] = []
    rois, labels = [], []
    profile_sum = np.zeros(shape)
    for malignant in pathologies:
        r0 = rng.uniform(0.03, 0.07) * w
        centre = _place(rng, region, taken, r0)
        if centre is None:
            continue
        taken.append((centre[0], centre[1], r0))
        body, profile, shape_label, margin = mass_shape(rng, malignant, xx, yy, centre, float(np.pi * r0**2))
        profile_sum = np.maximum(profile_sum, rng.uniform(0.12, 0.3) * profile)
        rois.append(ndimage.binary_dilation(body, iterations=2))
        labels.append({"malignant": malignant, "shape": shape_label, "margin": margin})
    for _ in range(int(rng.integers(1, 4))):
        r0 = rng.uniform(0.03, 0.07) * w
        centre = _place(rng, region, taken, r0)
        if centre is not None:
            taken.append((centre[0], centre[1], r0))
            profile_sum = np.maximum(profile_sum, rng.uniform(0.12, 0.3) * look_alike(rng, xx, yy, centre, r0))
    image = image + profile_sum * (image > 0)
    calcifications(rng, image, inner)
    ys, xs = region
    k = int(rng.integers(ys.size))
    cluster = np.zeros(shape, bool)
    for _ in range(int(rng.integers(4, 9))):  # a calcification cluster (the calc CSV's abnormality)
        y = int(np.clip(ys[k] + rng.normal(0, 0.02 * w), 0, h - 2))
        x = int(np.clip(xs[k] + rng.normal(0, 0.02 * w), 0, w - 2))
        image[y : y + 2, x : x + 2] += rng.uniform(0.3, 0.6)
        cluster[y : y + 2, x : x + 2] = True
    if response["blur"] > 0:
        image = ndimage.gaussian_filter(image, response["blur"])
    image = image + rng.normal(0.0, response["noise"], shape) * (image > 0)
    image = np.clip(image / 1.6, 0.0, 1.0)
    if response["gamma"] != 1.0:
        image = image ** response["gamma"]
    return {"image": image, "rois": rois, "labels": labels, "density": density,
            "calc_roi": ndimage.binary_dilation(cluster, iterations=3)}


def write_image(dataset_dir: Path, rng: np.random.Generator, split: str, patient: str, side: str, view: str,
                pathologies: list[bool], shape: tuple[int, int], encoding: dict, scanner: str = "A") -> tuple:
    """Render and write one mammogram, its ROI masks and crops; return its (mass rows, calc rows)."""
    case = render_image(rng, pathologies, view, shape, scanner)
    kind = "Mass" if case["rois"] else "Calc"
    full_dir = f"{kind}-{SPLITS[split]}_{patient}_{side}_{view}"
    full_path = f"{full_dir}/{_uid(rng)}/{_uid(rng)}/000000.dcm"
    smax = 2 ** encoding["bits_stored"] - 1
    values = np.rint(case["image"] * 0.9 * smax) * encoding["slope"] + encoding["intercept"]
    common = {"patient_id": patient, "laterality": side[0], "view": view}
    enc = {k: encoding[k] for k in ("bits_stored", "photometric", "slope", "intercept")}
    write_dicom(dataset_dir / full_path, values, **enc, **common, uid_seed=full_path,
                description="full mammogram images")
    rois = case["rois"] or [case["calc_roi"]]
    rows = []
    for number, roi in enumerate(rois, start=1):
        study = _uid(rng)
        crop_path = f"{full_dir}_{number}/{study}/{_uid(rng)}/000000.dcm"
        mask_path = f"{full_dir}_{number}/{study}/{_uid(rng)}/000001.dcm"
        y0, y1, x0, x1 = crop_box(roi, 0.25)
        write_dicom(dataset_dir / crop_path, values[y0:y1, x0:x1], **enc, **common, uid_seed=crop_path,
                    description="cropped images")
        write_dicom(dataset_dir / mask_path, roi.astype(np.uint8) * 255, bits_stored=8, **common,
                    uid_seed=mask_path, description="ROI mask images")
        row = {"patient_id": patient, "breast density": case["density"], "left or right breast": side,
               "image view": view, "abnormality id": number, "image file path": full_path,
               "cropped image file path": crop_path, "ROI mask file path": mask_path + "\n"}
        if case["rois"]:
            label = case["labels"][number - 1]
            malignant = label["malignant"]
            row.update({"abnormality type": "mass", "mass shape": label["shape"], "mass margins": label["margin"],
                        "assessment": int(rng.integers(4, 6)) if malignant else int(rng.integers(2, 5)),
                        "pathology": "MALIGNANT" if malignant else "BENIGN", "subtlety": int(rng.integers(2, 6))})
        else:
            row.update({"abnormality type": "calcification", "calc type": "PUNCTATE", "calc distribution": "CLUSTERED",
                        "assessment": 2, "pathology": "BENIGN_WITHOUT_CALLBACK", "subtlety": int(rng.integers(2, 6))})
        rows.append(row)
    return (rows, []) if case["rois"] else ([], rows)


def write_split(dataset_dir: Path, rng: np.random.Generator, split: str, num_images: int, first_patient: int,
                shape: tuple[int, int], malignant_fraction: float, scanner: str = "A") -> int:
    """Write ``num_images`` mammograms (one or two views per patient) and the split's mass and calc CSVs."""
    mass_rows, calc_rows, written, patient_no = [], [], 0, first_patient
    while written < num_images:
        patient, side, encoding = f"P_{patient_no:05d}", str(rng.choice(["LEFT", "RIGHT"])), dicom_encoding(rng)
        for view in ["CC", "MLO"][: int(rng.integers(1, 3))][: num_images - written]:
            count = int(rng.choice(len(MASS_COUNT_PROBS), p=MASS_COUNT_PROBS))
            pathologies = [bool(rng.random() < malignant_fraction) for _ in range(count)]
            masses, calcs = write_image(dataset_dir, rng, split, patient, side, view, pathologies, shape, encoding,
                                        scanner)
            mass_rows += masses
            calc_rows += calcs
            written += 1
        patient_no += int(rng.integers(1, 4))
    if split == "train":  # the real training CSVs spell this column with an underscore
        mass_rows = [{("breast_density" if k == "breast density" else k): v for k, v in r.items()} for r in mass_rows]
    write_csv(dataset_dir / f"mass_case_description_{split}_set.csv", mass_rows,
              fieldnames=list(dict.fromkeys(k for r in mass_rows for k in r)) if mass_rows else CSV_COLUMNS)
    write_csv(dataset_dir / f"calc_case_description_{split}_set.csv", calc_rows, fieldnames=CALC_COLUMNS)
    return patient_no


def synthesize(dataset_dir: str | os.PathLike, num_cases: int = 120, seed: int = 0,
               image_size: tuple[int, int] | list[int] = (512, 384), malignant_fraction: float = 0.45,
               scanner: str = "A") -> str:
    """Write a synthetic CBIS-DDSM detection set: ``num_cases`` training mammograms, max(num_cases // 2, 8) test ones.

    Args:
        dataset_dir: output folder (created).
        num_cases: training mammograms (>= 4).
        seed: the generator's seed.
        image_size: (rows, columns) of the full mammograms (>= 128 x 96); pixel spacing 0.2 mm.
        malignant_fraction: probability that a mass is malignant.
        scanner: the simulated scanner (:data:`scripts.phantom.SCANNERS`).

    Returns:
        ``dataset_dir`` as a string.

    Raises:
        ValueError: bad sizes or fractions, or an unknown scanner.
    """
    return write_splits(dataset_dir, num_cases, seed, image_size, malignant_fraction, scanner, 4,
                        functools.partial(write_split, malignant_fraction=malignant_fraction, scanner=scanner))


def ensure_dataset(dataset_dir: str | os.PathLike, default_dir: str | os.PathLike, num_cases: int = 120,
                   seed: int = 0, image_size: tuple[int, int] | list[int] = (512, 384)) -> str:
    """Generate the synthetic set on first use, only when ``dataset_dir`` is the bundle's default detection folder."""
    root = Path(str(dataset_dir))
    if (root.resolve() == Path(str(default_dir)).resolve()
            and not (root / "mass_case_description_train_set.csv").exists()):
        synthesize(root, num_cases=num_cases, seed=seed, image_size=image_size)
    return str(root)


__all__ = ["SCANNERS", "synthesize", "ensure_dataset", "render_image"]
