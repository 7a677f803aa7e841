"""Synthetic short-axis cine-MRI phantom written in the ACDC 2017 layout.

Each patient is a stack of 8-12 short-axis slices (in-plane ~1.4-1.8 mm at 128 px, 6-11 mm between slices) at
end-diastole (ED) and end-systole (ES). The LV cavity is a truncated half-ellipsoid (base plane to apex) inside a
myocardial wall; the RV cavity is a crescent that wraps the septum over the basal part of the ventricle. Between ED
and ES the LV shortens along its long axis (the base descends towards a fixed apex) and its cavity shrinks to a
per-patient ejection fraction drawn from 20-70 % (reduced EF patients get dilated ventricles); the wall thickens
at constant myocardial area. Papillary muscles and trabeculation (myocardial intensity, labelled as cavity as in
ACDC) lie inside the cavity; lungs, body wall, subcutaneous and epicardial fat surround the heart; a surface-coil
intensity falloff, blur and Rician noise complete the image; a simulated scanner (``scanner``, :data:`SCANNERS`; "A"
changes nothing) may first change the tissue contrast and add a site-wide intensity gradient. ``Info.cfg`` holds
ED/ES, NbFrame, Group, Height, Weight as ACDC does, plus ``EF_LV`` / ``EF_RV``: the ejection fractions of the written
ground-truth masks.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from common import scanners
from common.io import save_nifti, write_text
from scripts.clinical import LV, MYO, RV, clinical_indices

logger = logging.getLogger(__name__)

#: Simulated scanners (site shift for transfer experiments, docs/fine-tuning.md), the same ids as the breast and
#: brain phantoms': ``contrast``, an exponent on the noise-free tissue intensities in [0, 1] (above 1 darkens
#: myocardium against blood, i.e. raises the blood-myocardium contrast; below 1 flattens it); ``bias``, the strength
#: of a site-wide multiplicative field ``exp(bias * u)``, ``u = coordinate / (fov / 2)`` from -1 to 1 across the
#: field of view along ``axis`` (0 = the image's first axis, 1 = its second), a receive-coil profile on top of each
#: patient's own coil falloff. Applied before the falloff, blur and noise, with no random number, so every scanner
#: sees the same anatomy and noise draws. "A" is the default and leaves every image as before.
SCANNERS = {"A": {"contrast": 1.0, "bias": 0.0, "axis": 0},
            "B": {"contrast": 0.7, "bias": 0.35, "axis": 0},
            "C": {"contrast": 1.4, "bias": -0.3, "axis": 1}}


def apply_scanner(image: np.ndarray, coordinates: tuple[np.ndarray, np.ndarray], fov: float,
                  scanner: str = "A") -> np.ndarray:
    """A noise-free image as ``scanner`` sees it: ``image ** contrast * exp(bias * u)`` with ``u`` the in-plane
    coordinate (mm, centred, broadcastable to the image) of ``axis`` divided by ``fov / 2`` (see :data:`SCANNERS`);
    the same array, untouched, for scanner "A" (:func:`common.scanners.contrast_and_bias`). float32, the image's
    shape.

    Raises:
        ValueError: an unknown scanner.
    """
    response = scanners.scanner_response(SCANNERS, scanner)
    u = coordinates[response["axis"]] / (float(fov) / 2.0)
    return scanners.contrast_and_bias(image, response["contrast"], response["bias"], u)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ra: np.ndarray, rb: np.ndarray,
             angle: float) -> np.ndarray:
    """Inside-test of per-slice ellipses (semi-axes ``ra``/``rb`` broadcast over the last axis), rotated by angle."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = (u / ra) ** 2 + (v / rb) ** 2 <= 1.0
    return inside & (ra > 0) & (rb > 0)


def _profile(z: np.ndarray, z_base: float, c: float) -> np.ndarray:
    """In-plane scale of a half-ellipsoid (base plane at ``z_base``, apex at ``z_base + c``) at heights ``z``."""
    zz = (z - z_base) / c
    return np.where((zz >= 0) & (zz < 1), np.sqrt(np.clip(1 - zz**2, 0, 1)), 0.0)


def draw_patient_parameters(rng: np.random.Generator) -> dict[str, Any]:
    """Anatomy and acquisition of one synthetic patient (lengths in mm)."""
    ef = float(rng.uniform(20, 70))
    dilation = 1.2 if ef < 40 else 1.0
    a = float(rng.uniform(21, 28)) * dilation
    c_ed = float(rng.uniform(58, 75)) * dilation ** 0.5
    n_slices = int(rng.integers(8, 13))
    thickness = float(rng.uniform(7, 11))
    return {
        "ef_target": ef, "rvef_target": float(rng.uniform(30, 65)),
        "a": a, "b": a * float(rng.uniform(0.85, 1.0)), "c_ed": c_ed, "c_es": c_ed * float(rng.uniform(0.86, 0.93)),
        "t": thickness, "lv_angle": float(rng.uniform(0, math.pi)),
        "rv_dir": math.pi + float(rng.uniform(-0.35, 0.35)), "rv_ra": float(rng.uniform(18, 25)),
        "rv_rb_scale": float(rng.uniform(1.35, 1.65)), "rv_len": float(rng.uniform(0.7, 0.85)),
        "center": rng.uniform(-6, 6, size=2), "n_slices": n_slices,
        "slice_spacing": round((c_ed + thickness + float(rng.uniform(0, 8))) / (n_slices - 1), 1),
        "z_base": float(rng.uniform(-4, 0)), "fov": float(rng.uniform(190, 230)),
        "es_frame": int(rng.integers(8, 16)), "noise": float(rng.uniform(0.02, 0.05)),
        "coil_angle": float(rng.uniform(0, 2 * math.pi)), "gain": float(rng.uniform(300, 800)),
        "height": round(float(rng.uniform(150, 195)), 1), "weight": round(float(rng.uniform(50, 110)), 1),
    }


def _phase_geometry(p: dict[str, Any], phase: str) -> dict[str, float]:
    """Semi-axes and base position of the LV cavity, epicardium and RV at ``phase`` ("ED" or "ES")."""
    a, b, t = p["a"], p["b"], p["t"]
    if phase == "ED":
        return {"a": a, "b": b, "c": p["c_ed"], "ao": a + t, "bo": b + t, "co": p["c_ed"] + t,
                "z_base": p["z_base"], "rv_scale": 1.0}
    k = math.sqrt((1 - p["ef_target"] / 100) * p["c_ed"] / p["c_es"])
    a_es, b_es = a * k, b * k
    shift = p["c_ed"] - p["c_es"]
    return {"a": a_es, "b": b_es, "c": p["c_es"], "ao": math.sqrt(a_es**2 + (a + t) ** 2 - a**2),
            "bo": math.sqrt(b_es**2 + (b + t) ** 2 - b**2), "co": p["c_es"] + t * 1.3,
            "z_base": p["z_base"] + shift, "rv_scale": math.sqrt(1 - p["rvef_target"] / 100)}


def render_phase(p: dict[str, Any], phase: str, size: int, rng: np.random.Generator,
                 scanner: str = "A") -> tuple[np.ndarray, np.ndarray]:
    """Label map (uint8: 0 bg, 1 RV, 2 MYO, 3 LV) and image (int16) of one phase, shape (size, size, n_slices), as
    the simulated ``scanner`` sees it (:func:`apply_scanner`; the label and the random draws do not depend on it)."""
    g, s = _phase_geometry(p, phase), p["fov"] / size
    coords = (np.arange(size) + 0.5) * s - p["fov"] / 2
    x, y = np.meshgrid(coords, coords, indexing="ij")
    x, y = x[..., None], y[..., None]
    z = np.arange(p["n_slices"]) * p["slice_spacing"]
    cx, cy = p["center"]
    f_in, f_out = _profile(z, g["z_base"], g["c"]), _profile(z, g["z_base"], g["co"])
    cavity = _ellipse(x, y, cx, cy, g["a"] * f_in, g["b"] * f_in, p["lv_angle"])
    epi = _ellipse(x, y, cx, cy, g["ao"] * f_out, g["bo"] * f_out, p["lv_angle"])
    f_rv = _profile(z, g["z_base"], p["rv_len"] * g["co"])
    ra, rb = p["rv_ra"] * g["rv_scale"] * f_rv, g["bo"] * p["rv_rb_scale"] * math.sqrt(g["rv_scale"]) * f_rv
    d = g["ao"] * f_rv + 0.4 * ra
    rv = _ellipse(x, y, cx + d * math.cos(p["rv_dir"]), cy + d * math.sin(p["rv_dir"]), ra, rb, p["rv_dir"]) & ~epi
    label = np.zeros(x.shape[:2] + z.shape, np.uint8)
    label[rv], label[epi], label[cavity] = RV, MYO, LV
    return label, _render_image(p, label, x, y, z, g, s, rng, scanner)


def _render_image(p: dict[str, Any], label: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray,
                  g: dict[str, float], s: float, rng: np.random.Generator, scanner: str = "A") -> np.ndarray:
    """bSSFP-like intensities around the label map, the scanner's response, coil falloff, blur and Rician noise."""
    fov, shape = p["fov"], label.shape
    img = np.zeros(shape, np.float32)
    body = ((x / (0.44 * fov)) ** 2 + (y / (0.34 * fov)) ** 2 <= 1) & np.ones(shape, bool)
    inner = ((x / (0.44 * fov - 9)) ** 2 + (y / (0.34 * fov - 9)) ** 2 <= 1) & body
    img[body], img[inner] = 0.8, 0.4
    for side in (-1, 1):
        lung = (((x - side * 0.22 * fov) / (0.13 * fov)) ** 2 + ((y + 0.02 * fov) / (0.22 * fov)) ** 2 <= 1)
        img[lung & np.ones(shape, bool)] = 0.06
    heart = label > 0
    fat = ndimage.binary_dilation(heart, structure=np.ones((3, 3, 1), bool), iterations=max(1, round(3 / s))) & ~heart
    angle = np.arctan2(y - p["center"][1], x - p["center"][0]) + np.zeros(shape)
    img[fat & (np.cos(angle - rng.uniform(0, 2 * np.pi)) > -0.2)] = 0.75
    img[label == MYO] = 0.28
    img[(label == LV) | (label == RV)] = 0.95
    img[_papillary_and_trabeculae(p, label, x, y, z, g, s, rng)] = 0.3
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(4, 4, 0))
    img *= 1 + 0.6 * smooth / (np.abs(smooth).max() + 1e-6) * 0.15
    img = apply_scanner(img, (x, y), fov, scanner)
    coil = np.array([math.cos(p["coil_angle"]), math.sin(p["coil_angle"])]) * 0.45 * fov
    img *= 0.45 + 0.75 * np.exp(-((x - coil[0]) ** 2 + (y - coil[1]) ** 2) / (2 * (0.45 * fov) ** 2))
    img = ndimage.gaussian_filter(img, sigma=(0.6, 0.6, 0))
    n1, n2 = rng.normal(0, p["noise"], shape), rng.normal(0, p["noise"], shape)
    img = np.sqrt((img + n1) ** 2 + n2**2) * p["gain"]
    return np.clip(np.round(img), 0, 32767).astype(np.int16)


def _papillary_and_trabeculae(p: dict[str, Any], label: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray,
                              g: dict[str, float], s: float, rng: np.random.Generator) -> np.ndarray:
    """Dark structures inside the LV cavity: two papillary muscles in mid slices and a trabeculated rim."""
    cavity = label == LV
    f = _profile(z, g["z_base"], g["c"])
    mid = (f > 0.45) & (f < 0.95)
    dark = np.zeros(label.shape, bool)
    for offset in (-0.8, 0.8):
        phi = p["rv_dir"] + math.pi + offset
        r = 0.7 * g["a"] * f
        px, py = p["center"][0] + r * math.cos(phi), p["center"][1] + r * math.sin(phi)
        radius = max(3.0, 0.15 * g["a"])
        dark |= (((x - px) ** 2 + (y - py) ** 2) <= radius**2) & mid
    rim = cavity & ~ndimage.binary_erosion(cavity, structure=np.ones((3, 3, 1), bool), iterations=max(1, round(3 / s)))
    dark |= rim & (ndimage.gaussian_filter(rng.standard_normal(label.shape), sigma=(1, 1, 0)) > 0.35)
    return dark & cavity


def write_patient(patient_dir: Path, name: str, p: dict[str, Any], size: int, rng: np.random.Generator,
                  scanner: str = "A") -> dict:
    """Write ``Info.cfg`` and the ED/ES image and ground-truth NIfTI files of one patient; return its indices."""
    s = p["fov"] / size
    spacing = (s, s, p["slice_spacing"])
    affine = np.diag([-s, -s, p["slice_spacing"], 1.0])
    affine[:3, 3] = [p["fov"] / 2, p["fov"] / 2, -p["slice_spacing"] * p["n_slices"] / 2]
    labels = {}
    for phase, frame in (("ED", 1), ("ES", p["es_frame"])):
        label, image = render_phase(p, phase, size, rng, scanner)
        labels[phase] = label
        stem = patient_dir / f"{name}_frame{frame:02d}"
        save_nifti(image, affine, f"{stem}.nii.gz")
        save_nifti(label, affine, f"{stem}_gt.nii.gz")
    row = clinical_indices(labels["ED"], labels["ES"], spacing, name)
    group = "DCM" if row["lv_ef_pct"] < 40 else ("MINF" if row["lv_ef_pct"] < 50 else "NOR")
    write_text(patient_dir / "Info.cfg",
               f"ED: 1\nES: {p['es_frame']}\nGroup: {group}\nHeight: {p['height']}\nNbFrame: 30\n"
               f"Weight: {p['weight']}\nEF_LV: {row['lv_ef_pct']:.4f}\nEF_RV: {row['rv_ef_pct']:.4f}\n")
    return row


def write_dataset(dataset_dir: str, num_cases: int = 30, seed: int = 0, image_size: int = 128,
                  num_test_cases: int | None = None, scanner: str = "A") -> str:
    """Write ``<dataset_dir>/{training,testing}/patientNNN/`` in the ACDC layout and return ``dataset_dir``.

    Args:
        dataset_dir: target folder (created).
        num_cases: training patients (numbered from 001, as ACDC).
        seed: the dataset seed; each patient draws from ``SeedSequence([seed, number])``.
        image_size: in-plane matrix (square); the field of view stays ~190-230 mm, so spacing follows.
        num_test_cases: testing patients (numbered after the training ones); default max(ceil(n/2), 8).
        scanner: the simulated scanner of every image (:data:`SCANNERS`: "A" default, "B", "C"): a site shift; the
            anatomy, masks and ``Info.cfg`` are the same on every scanner.

    Raises:
        ValueError: a non-positive count, an image size below 32 or an unknown scanner (before anything is written).
    """
    scanners.scanner_response(SCANNERS, scanner)
    dataset_dir, num_cases, seed, image_size = str(dataset_dir), int(num_cases), int(seed), int(image_size)
    num_test = max(-(-num_cases // 2), 8) if num_test_cases is None else int(num_test_cases)
    if num_cases < 1 or num_test < 1 or image_size < 32:
        raise ValueError(f"need num_cases >= 1, num_test_cases >= 1, image_size >= 32; got {num_cases}, "
                         f"{num_test}, {image_size}.")
    for number in range(1, num_cases + num_test + 1):
        split = "training" if number <= num_cases else "testing"
        name = f"patient{number:03d}"
        rng = np.random.default_rng(np.random.SeedSequence([seed, number]))
        write_patient(Path(dataset_dir) / split / name, name, draw_patient_parameters(rng), image_size, rng,
                      str(scanner))
    logger.info("wrote %d training + %d testing synthetic patients to %s", num_cases, num_test, dataset_dir)
    return dataset_dir
