"""Clinical indices from ACDC label maps: ventricular volumes, ejection fractions and myocardial mass.

Volumes are voxel counts times the voxel volume from the NIfTI spacing (mm^3 -> ml), as in the ACDC challenge
(Bernard et al., IEEE TMI 37(11):2514-2525, 2018): LV and RV end-diastolic / end-systolic volumes (EDV, ESV), the
ejection fraction EF = (EDV - ESV) / EDV in percent, and the myocardial mass at end-diastole as myocardial volume
times 1.05 g/ml.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

RV, MYO, LV = 1, 2, 3
MYOCARDIAL_DENSITY_G_PER_ML = 1.05
CLINICAL_COLUMNS = ["patient", "lv_edv_ml", "lv_esv_ml", "lv_ef_pct", "rv_edv_ml", "rv_esv_ml", "rv_ef_pct",
                    "myo_mass_g"]


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in ml from its spacing in mm (1 ml = 1000 mm^3).

    Raises:
        ValueError: fewer than three spacings, or a spacing that is not a finite positive number.
    """
    values = [float(s) for s in spacing]
    if len(values) < 3 or not all(np.isfinite(v) and v > 0 for v in values[:3]):
        raise ValueError(f"voxel spacing must be three positive finite numbers (mm), got {list(spacing)}.")
    return values[0] * values[1] * values[2] / 1000.0


def structure_volume_ml(label: np.ndarray, spacing: Sequence[float], value: int) -> float:
    """Volume in ml of the voxels of ``label`` equal to ``value``."""
    return float(np.count_nonzero(np.asarray(label) == value)) * voxel_volume_ml(spacing)


def ejection_fraction(edv: float, esv: float) -> float | None:
    """EF in percent, ``100 * (EDV - ESV) / EDV``; None when EDV is not positive (undefined)."""
    if not edv > 0:
        return None
    return 100.0 * (float(edv) - float(esv)) / float(edv)


def myocardial_mass_g(label_ed: np.ndarray, spacing: Sequence[float],
                      density: float = MYOCARDIAL_DENSITY_G_PER_ML) -> float:
    """Myocardial mass in g: end-diastolic myocardial volume (label 2) times ``density`` (g/ml)."""
    return structure_volume_ml(label_ed, spacing, MYO) * float(density)


def clinical_indices(label_ed: np.ndarray, label_es: np.ndarray, spacing: Sequence[float],
                     patient: str = "") -> dict[str, Any]:
    """The clinical.csv row of one patient from its ED and ES label maps (0 bg, 1 RV, 2 MYO, 3 LV).

    Raises:
        ValueError: the two label maps differ in shape, or the spacing is invalid.
    """
    label_ed, label_es = np.asarray(label_ed), np.asarray(label_es)
    if label_ed.shape != label_es.shape:
        raise ValueError(f"{patient}: ED and ES label shapes differ: {label_ed.shape} vs {label_es.shape}.")
    lv_edv, lv_esv = structure_volume_ml(label_ed, spacing, LV), structure_volume_ml(label_es, spacing, LV)
    rv_edv, rv_esv = structure_volume_ml(label_ed, spacing, RV), structure_volume_ml(label_es, spacing, RV)
    return {
        "patient": patient,
        "lv_edv_ml": lv_edv,
        "lv_esv_ml": lv_esv,
        "lv_ef_pct": ejection_fraction(lv_edv, lv_esv),
        "rv_edv_ml": rv_edv,
        "rv_esv_ml": rv_esv,
        "rv_ef_pct": ejection_fraction(rv_edv, rv_esv),
        "myo_mass_g": myocardial_mass_g(label_ed, spacing),
    }


def ellipsoid_mask(shape: Sequence[int], spacing: Sequence[float], center_mm: Sequence[float],
                   semi_axes_mm: Sequence[float]) -> np.ndarray:
    """Boolean mask of the voxels whose centres lie inside an axis-aligned ellipsoid (all lengths in mm)."""
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    radius2 = sum(((g - c) / a) ** 2 for g, c, a in zip(grids, center_mm, semi_axes_mm))
    return radius2 <= 1.0
