"""Per-region metrics of the brain bundle: Dice and HD95 for TC, WT and ET, in the input's own voxel grid.

Validation during training uses MONAI's ``MeanDice`` in the network's grid; :func:`region_pairs` picks one region
channel for it. The evaluate workflow inverts the prediction back to the input's grid and :class:`CaseRows` compares
it with the label file as stored on disk, with the file's voxel spacing for HD95 (mm), as the BraTS challenge does;
the spacing is that of the affine ``common.geometry`` decides (sform first), the one the prediction was resampled in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from .transforms import REGIONS

logger = logging.getLogger(__name__)
CASE_METRICS = ["mean_dice"] + [f"dice_{r.lower()}" for r in REGIONS] + [f"hd95_{r.lower()}" for r in REGIONS]


def region_pairs(index: int) -> Callable[[Any], tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """An ``output_transform`` for MONAI metric handlers that keeps only region channel ``index`` (0 TC, 1 WT, 2 ET)."""
    if index not in (0, 1, 2):
        raise ValueError(f"region index must be 0 (TC), 1 (WT) or 2 (ET), got {index}.")

    def pick(output: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        items = output if isinstance(output, list) else [output]
        return [o["pred"][index : index + 1] for o in items], [o["label"][index : index + 1] for o in items]

    return pick


def labels_to_regions(label: np.ndarray) -> np.ndarray:
    """BraTS labels (HWD) → binary regions TC (1∪4), WT (1∪2∪4), ET (4), shape 3HWD."""
    return np.stack([(label == 1) | (label == 4), label > 0, label == 4]).astype(bool)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty (the BraTS convention), 0.0 when only one is."""
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * float(np.logical_and(pred, truth).sum()) / total


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float | None:
    """95th-percentile Hausdorff distance in mm (MONAI's ``compute_hausdorff_distance``); None when either is empty."""
    if not pred.any() or not truth.any():
        return None
    value = compute_hausdorff_distance(torch.as_tensor(pred[None, None]), torch.as_tensor(truth[None, None]),
                                       percentile=95, spacing=[float(s) for s in spacing])
    value = float(value.reshape(-1)[0])
    return value if np.isfinite(value) else None


def region_metrics(pred_regions: np.ndarray, truth_regions: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """Dice and HD95 per region plus ``mean_dice`` for one case (3HWD binary arrays)."""
    if pred_regions.shape != truth_regions.shape:
        raise ValueError(f"prediction shape {pred_regions.shape} differs from ground truth {truth_regions.shape}.")
    row: dict[str, Any] = {}
    for i, name in enumerate(r.lower() for r in REGIONS):
        row[f"dice_{name}"] = dice(pred_regions[i], truth_regions[i])
        row[f"hd95_{name}"] = hd95(pred_regions[i], truth_regions[i], spacing)
    row["mean_dice"] = float(np.mean([row[f"dice_{r.lower()}"] for r in REGIONS]))
    return row


class CaseRows:
    """``case_rows`` of ``common.handlers.EvaluationWriter``: one row per case, against the label file on disk.

    Each item of ``engine.state.output`` holds ``pred`` (3HWD binary regions, already inverted to the input grid);
    the matching item of ``engine.state.batch`` holds ``label_path`` (the case's ``_seg.nii.gz``) and ``case``.
    The first ``max_overlays`` cases also get an overlay PNG (FLAIR, ground truth, prediction) in ``overlay_dir``.
    """

    def __init__(self, overlay_dir: str | None = None, max_overlays: int = 4) -> None:
        self.overlay_dir = Path(str(overlay_dir)) if overlay_dir else None
        self.max_overlays = int(max_overlays)
        self.seen = 0

    def __call__(self, engine: Any) -> list[dict[str, Any]]:
        from common.geometry import load, voxel_sizes

        rows = []
        for case, output in zip(engine.state.batch, engine.state.output):
            item = {**case, **output}
            label_img = load(str(item["label_path"]))
            truth = np.asarray(label_img.dataobj).astype(np.int16)
            pred = np.asarray(torch.as_tensor(item["pred"]).detach().cpu().numpy() > 0.5)
            row = {"case": str(item["case"])}
            row.update(region_metrics(pred, labels_to_regions(truth), voxel_sizes(label_img)))
            rows.append(row)
            if self.overlay_dir is not None and self.seen < self.max_overlays:
                self._overlay(item, pred, truth, row)
            self.seen += 1
        return rows

    def _overlay(self, item: dict[str, Any], pred: np.ndarray, truth: np.ndarray, row: dict[str, Any]) -> None:
        import nibabel as nib

        from common.overlays import middle_slice, save_overlay_png

        from .transforms import RegionsToBratsLabels

        try:
            flair_path = str(item["label_path"]).replace("_seg.nii.gz", "_flair.nii.gz")
            flair = np.asarray(nib.load(flair_path).dataobj, dtype=np.float32)
            pred_label = RegionsToBratsLabels()(pred)[0]
            z = middle_slice(truth, axis=2, mask=truth > 0)
            save_overlay_png(flair[:, :, z].T, truth[:, :, z].T, pred_label[:, :, z].T,
                             self.overlay_dir / f"{row['case']}_overlay.png",
                             title=f"{row['case']} axial slice {z}: mean Dice {row['mean_dice']:.3f}",
                             class_names={1: "NCR", 2: "ED", 4: "ET"})
        except Exception as e:  # noqa: BLE001 - an overlay is a picture for the report, never a reason to fail
            logger.warning("overlay for %s not written: %s", row["case"], e)


def uncertainty_arrays(batch: Any, output: Any) -> dict[str, Any]:
    """``item_arrays`` of ``common.uncertainty.UncertaintyCaseRows``: one case's entropy (HWD, nats), wrong voxels
    (any of TC/WT/ET differs from the label file ``label_path``), tumour in truth or prediction, predicted tumour."""
    from common.geometry import load

    truth = labels_to_regions(np.asarray(load(str(batch["label_path"])).dataobj).astype(np.int16)).astype(bool)
    pred = np.asarray(torch.as_tensor(output["pred"]).detach().cpu().numpy() > 0.5)
    return {"case": str(batch["case"]), "uncertainty": torch.as_tensor(output["uncertainty"])[0].cpu().numpy(),
            "wrong": (pred != truth).any(0), "foreground": (pred | truth).any(0), "predicted": pred.any(0)}
