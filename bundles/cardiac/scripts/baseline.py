"""Classical baseline for the benchmark: thresholding and connected components around the image centre.

Per slice: Otsu threshold of the central field of view gives the bright blood pools; the connected component
nearest the image centre is the LV cavity, the largest other bright component touching a ring around it is the RV
cavity, and the myocardium is the dark ring of fixed thickness (``wall_mm``) around the LV cavity.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu


def segment_slice(image: np.ndarray, spacing: tuple[float, float], wall_mm: float = 9.0) -> np.ndarray:
    """Label map (0 bg, 1 RV, 2 MYO, 3 LV) of one 2D slice."""
    h, w = image.shape
    cy, cx = h / 2, w / 2
    half = (int(h * 0.3), int(w * 0.3))
    centre = image[int(cy) - half[0]:int(cy) + half[0], int(cx) - half[1]:int(cx) + half[1]]
    out = np.zeros(image.shape, np.uint8)
    if centre.max() <= centre.min():
        return out
    bright = ndimage.binary_opening(image > threshold_otsu(centre), iterations=1)
    components, n = ndimage.label(bright)
    if n == 0:
        return out
    yy, xx = np.mgrid[:h, :w]
    dist = np.hypot((yy - cy) * spacing[0], (xx - cx) * spacing[1])
    nearest = [float(dist[components == k].min()) for k in range(1, n + 1)]
    lv_id = int(np.argmin(nearest)) + 1
    if nearest[lv_id - 1] > 40:  # nothing bright near the centre: no heart on this slice
        return out
    lv = ndimage.binary_fill_holes(components == lv_id)
    wall = max(1, int(round(wall_mm / float(np.mean(spacing)))))
    ring = ndimage.binary_dilation(lv, iterations=wall) & ~lv
    touching = [k for k in np.unique(components[ndimage.binary_dilation(ring, iterations=2)]) if k not in (0, lv_id)]
    if touching:
        sizes = [(int((components == k).sum()), k) for k in touching]
        out[components == max(sizes)[1]] = 1
    out[ring & (out == 0)] = 2
    out[lv] = 3
    return out


def segment_volume(image: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Slice-wise baseline over a short-axis stack (H, W, S)."""
    return np.stack([segment_slice(image[..., k], spacing[:2]) for k in range(image.shape[2])], axis=-1)
