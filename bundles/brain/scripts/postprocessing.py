"""Brain post-processing fitted on the validation split: a probability threshold, a minimum connected-component
volume and a minimum region volume per region (TC, WT, ET).

The network's false positives on this task are small blobs far from the tumour (the unlabelled white-matter
hyperintensities look like oedema, enhancing meninges like enhancing tumour). Keeping only the largest component
would remove them, but it assumes one tumour per case and deletes multifocal disease, which is real. Instead every
component smaller than a volume in mm³ is removed, region by region, with the volume (and the threshold) chosen on
the validation split when training ends (:class:`PostprocessingFitter`) and recorded in ``models/model.json``
(``region_thresholds``, ``min_component_mm3``). A component at least that large is always kept, so a second tumour
of that size survives. This is the connected-component post-processing of the BraTS challenge entries (e.g.
Isensee et al., "nnU-Net for brain tumor segmentation", BrainLes 2020, which removes small ET components), with the
volume learned instead of fixed.

A region whose whole remaining volume is below ``min_region_mm3`` is then emptied. For ET this is the BraTS rule
of the challenge winners (Isensee et al. 2020, section 2.5: "if the predicted ET volume is below a threshold,
replace ET by necrosis"): a tumour without enhancement (a low-grade glioma, about 10 % of the phantom cases and
of BraTS) scores ET Dice 1 when nothing is predicted and 0 for any false ET, so a few false ET voxels cost a whole
case. Emptying ET keeps TC as it was (the voxels become necrosis), so only the ET score changes. The volume is
fitted on the validation split like the others; when the validation cases hold no such case, the fit keeps 0.

An ET component that does not enhance is necrosis (:class:`RemoveNonEnhancingETd`, ``min_et_enhancement``). BraTS
annotates ET by what the radiologist sees: tumour that is hyperintense on T1Gd, against T1 and against healthy white
matter (Bakas et al., "Identifying the best machine learning algorithms for brain tumor segmentation, progression
assessment, and overall survival prediction in the BRATS challenge", arXiv:1811.02629, 2018). The network partly
learns the rim's shape instead: in a tumour without enhancement it calls the whole core ET, although the core is
dark on T1ce (median z-score about −1). Each 26-connected ET component whose median T1ce (z-scored over the brain by
the preprocessing) is below ``min_et_enhancement`` is taken out of ET; TC keeps it, so those voxels become necrosis.
It runs on the network's grid, before the prediction is resampled back, where the z-scored T1ce lies voxel for voxel
under the prediction. The value is fitted on the validation split with the others (``None``, the rule off, wins
ties).

Evaluate and inference apply :class:`RegionPostprocessd` in place of a plain 0.5 threshold; with the defaults
(thresholds 0.5, volumes 0, enhancement rule off) it is exactly MONAI's ``AsDiscreted(threshold=0.5)``.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type
from scipy import ndimage

from common.checkpoint import BestModelFitter, record_settings

from .transforms import REGIONS

logger = logging.getLogger(__name__)

#: candidate probability thresholds and minimum component volumes (mm³) searched on the validation split
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_VOLUMES_MM3 = (0.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0)
#: candidate minimum median T1ce z-scores of an ET component (``None``: rule off), searched on the validation split
MIN_ET_ENHANCEMENTS = (None, -1.0, -0.5, 0.0, 0.5, 1.0)
#: the ET region channel of the prediction and the T1ce channel of the image (T1, T1ce, T2, FLAIR)
ET_CHANNEL = REGIONS.index("ET")
ENHANCEMENT_CHANNEL = 1
#: 26-connectivity: a thin enhancing rim touching itself only diagonally stays one component
_STRUCTURE = ndimage.generate_binary_structure(3, 3)


def voxel_volume_mm3(affine: Any) -> float:
    """The volume of one voxel in mm³: ``|det|`` of the affine's 3 × 3 part (4 × 4 numpy array or tensor)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def _check(values: Sequence[float], name: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) != len(REGIONS):
        raise ValueError(f"{name} needs one value per region {REGIONS}, got {values}.")
    return values


def remove_small_components(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """``mask`` (bool, HWD) without its 26-connected components of fewer than ``min_voxels`` voxels."""
    if min_voxels <= 0 or not mask.any():
        return mask
    components, _ = ndimage.label(mask, structure=_STRUCTURE)
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[components]


def drop_small_region(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """``mask`` (bool, HWD), or an empty mask when it has fewer than ``min_voxels`` voxels in all."""
    return mask if min_voxels <= 0 or mask.sum() >= min_voxels else np.zeros_like(mask)


def component_medians(components: np.ndarray, count: int, values: np.ndarray) -> np.ndarray:
    """The median of ``values`` over each labelled component 1..``count`` of ``components`` (same shape), as an
    array of ``count + 1`` with ``nan`` at 0 (the background)."""
    medians = np.full(count + 1, np.nan)
    if count:
        inside = components > 0  # only the components' voxels: 40x faster than the whole grid at 1 mm
        medians[1:] = ndimage.median(values[inside], labels=components[inside], index=np.arange(1, count + 1))
    return medians


def enhancement_setting(value: float | str | None) -> float | None:
    """``min_et_enhancement`` as a number, or ``None`` for the rule off: ``None`` (``null`` in ``model.json``) or
    ``"off"`` (the command line's way: ``--min_et_enhancement off``, since ``monai.bundle run`` drops ``None``).

    Raises:
        ValueError: neither a number nor ``"off"``.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "off"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"min_et_enhancement must be a T1ce z-score or 'off', got {value!r}.") from None


def remove_non_enhancing_components(mask: np.ndarray, enhancement: np.ndarray,
                                    min_enhancement: float | str | None) -> np.ndarray:
    """``mask`` (bool, HWD) without its 26-connected components whose median ``enhancement`` (HWD, the z-scored
    T1ce) is below ``min_enhancement``; unchanged when the rule is off (``None`` or ``"off"``).

    Raises:
        ValueError: ``mask`` and ``enhancement`` differ in shape, or ``min_enhancement`` is not a number or "off".
    """
    if mask.shape != enhancement.shape:
        raise ValueError(f"the enhancement image {enhancement.shape} is not on the prediction's grid {mask.shape}.")
    min_enhancement = enhancement_setting(min_enhancement)
    if min_enhancement is None or not mask.any():
        return mask
    components, count = ndimage.label(mask, structure=_STRUCTURE)
    keep = component_medians(components, count, enhancement) >= min_enhancement
    keep[0] = False
    return keep[components]


class RemoveNonEnhancingETd(MapTransform):
    """Dictionary transform: in the region probabilities (``pred``, 3HWD on the image's grid, before ``Invertd``),
    set ET to 0 in each 26-connected component of ``ET >= threshold`` whose median T1ce z-score (channel
    :data:`ENHANCEMENT_CHANNEL` of ``image_key``, 4HWD after the preprocessing) is below ``min_enhancement``. TC and
    WT are unchanged, so the component becomes necrosis. ``min_enhancement`` ``None`` or ``"off"`` changes nothing.
    The rule's decision is certain: those ET probabilities are 0, so their predictive entropy is 0 too.

    Raises:
        ValueError: ``pred`` is not three region channels, ``image`` is not on its grid (the message names the
            case's file), or ``min_enhancement`` is neither a number nor "off" (when built).
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", threshold: float = 0.5,
                 min_enhancement: float | str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.threshold = image_key, float(threshold)
        self.min_enhancement = enhancement_setting(min_enhancement)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.min_enhancement is None:
            return d
        image = d[self.image_key]
        enhancement = np.asarray(image[ENHANCEMENT_CHANNEL].detach().cpu() if isinstance(image, torch.Tensor)
                                 else image[ENHANCEMENT_CHANNEL])
        for key in self.key_iterator(d):
            pred = d[key]
            if pred.shape[0] != len(REGIONS):
                raise ValueError(f"expected {len(REGIONS)} region channels {REGIONS}, got shape {tuple(pred.shape)}.")
            et = (pred[ET_CHANNEL] >= self.threshold)
            et = et.detach().cpu().numpy() if isinstance(et, torch.Tensor) else np.asarray(et)
            try:
                kept = remove_non_enhancing_components(et, enhancement, self.min_enhancement)
            except ValueError as e:
                source = getattr(image, "meta", {}).get("filename_or_obj", "this case")
                raise ValueError(f"{source}: {e}") from e
            removed = et & ~kept
            if removed.any():
                pred = pred.clone() if isinstance(pred, torch.Tensor) else np.array(pred, copy=True)
                pred[ET_CHANNEL][torch.as_tensor(removed) if isinstance(pred, torch.Tensor) else removed] = 0
                d[key] = pred
        return d


def postprocess(probabilities: np.ndarray, voxel_mm3: float, thresholds: Sequence[float] = (0.5, 0.5, 0.5),
                min_component_mm3: Sequence[float] = (0.0, 0.0, 0.0),
                min_region_mm3: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Binary regions (bool, 3HWD) from region probabilities (3HWD): ``p >= threshold``, then the components below
    ``min_component_mm3`` removed, then the region emptied when what is left is below ``min_region_mm3``, per region
    in the order TC, WT, ET (volumes in mm³, ``voxel_mm3`` the volume of one voxel).

    Raises:
        ValueError: not three region channels, or not three thresholds/volumes.
    """
    thresholds, volumes = _check(thresholds, "thresholds"), _check(min_component_mm3, "min_component_mm3")
    region_volumes = _check(min_region_mm3, "min_region_mm3")
    if probabilities.shape[0] != len(REGIONS):
        raise ValueError(f"expected {len(REGIONS)} region channels {REGIONS}, got shape {probabilities.shape}.")
    return np.stack([drop_small_region(remove_small_components(p >= t, v / voxel_mm3), m / voxel_mm3)
                     for p, t, v, m in zip(probabilities, thresholds, volumes, region_volumes)])


class RegionPostprocessd(MapTransform):
    """Dictionary transform: region probabilities (a 3HWD MetaTensor, its affine giving the voxel volume) → binary
    regions (float 0/1, as ``AsDiscreted`` gives) with :func:`postprocess`."""

    def __init__(self, keys: KeysCollection, thresholds: Sequence[float] = (0.5, 0.5, 0.5),
                 min_component_mm3: Sequence[float] = (0.0, 0.0, 0.0),
                 min_region_mm3: Sequence[float] = (0.0, 0.0, 0.0), allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.thresholds = _check(thresholds, "thresholds")
        self.min_component_mm3 = _check(min_component_mm3, "min_component_mm3")
        self.min_region_mm3 = _check(min_region_mm3, "min_region_mm3")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            affine = getattr(pred, "affine", None)
            voxel = voxel_volume_mm3(affine) if affine is not None else 1.0
            array = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
            regions = postprocess(array, voxel, self.thresholds, self.min_component_mm3, self.min_region_mm3)
            d[key] = convert_to_dst_type(regions, pred, dtype=torch.float32)[0]  # a MetaTensor keeps its meta
        return d


def _dice(intersection: float, pred_sum: float, truth_sum: float) -> float:
    total = pred_sum + truth_sum
    return 1.0 if total == 0 else 2.0 * intersection / total


def fit(cases: Sequence[tuple], thresholds: Sequence[float] = THRESHOLDS,
        min_volumes_mm3: Sequence[float] = MIN_VOLUMES_MM3,
        min_region_volumes_mm3: Sequence[float] = MIN_VOLUMES_MM3,
        min_et_enhancements: Sequence[float | None] = MIN_ET_ENHANCEMENTS) -> dict[str, Any]:
    """Choose, per region, the threshold, the minimum component volume and the minimum region volume, and for ET the
    minimum median enhancement of a component, with the highest mean Dice over ``cases``: ``(probabilities 3HWD, true
    regions 3HWD bool, voxel volume mm³)``, or with a fourth item, the z-scored T1ce (HWD) on the same grid. The
    enhancement rule is searched only when every case has its T1ce. Ties go to the threshold nearest 0.5, then to the
    smaller component volume, then to the smaller region volume, then to the rule off and then the lower enhancement
    (remove as little as the data allow). Each region's Dice depends only on its own choice, so the three searches
    are independent and together maximise the mean Dice.

    Returns:
        ``{"region_thresholds": [TC, WT, ET], "min_component_mm3": [...], "min_region_mm3": [...],
        "min_et_enhancement": z or None, "validation_dice_before": [...] (0.5, no removal),
        "validation_dice_after": [...], "num_cases": n}``.

    Raises:
        ValueError: no cases, or candidates without the default (threshold 0.5, volumes 0, rule off).
    """
    if not cases:
        raise ValueError("post-processing fit needs at least one validation case.")
    if 0.5 not in thresholds or 0.0 not in min_volumes_mm3 or 0.0 not in min_region_volumes_mm3 or (
            None not in min_et_enhancements):
        raise ValueError("the candidates must include the default (threshold 0.5, volumes 0, enhancement None).")
    with_enhancement = all(len(case) > 3 and case[3] is not None for case in cases)
    # the rule off first, then ascending: the tie-break order below
    enhancements = [None] + sorted(e for e in min_et_enhancements if e is not None)
    default = (list(thresholds).index(0.5), list(min_volumes_mm3).index(0.0), list(min_region_volumes_mm3).index(0.0),
               0)
    chosen: dict[str, list] = {"t": [], "v": [], "m": [], "e": []}
    before, after = [], []
    for r in range(len(REGIONS)):
        candidates = enhancements if r == ET_CHANNEL and with_enhancement else [None]
        shape = (len(thresholds), len(min_volumes_mm3), len(min_region_volumes_mm3), len(candidates))
        scores = np.zeros(shape)
        for case in cases:
            probabilities, truth, voxel_mm3 = case[:3]
            gt = truth[r].astype(bool)
            truth_sum = float(gt.sum())
            for i, t in enumerate(thresholds):
                components, count = ndimage.label(probabilities[r] >= t, structure=_STRUCTURE)
                sizes = np.bincount(components.ravel(), minlength=count + 1).astype(np.float64)
                overlap = np.bincount(components.ravel(), weights=gt.ravel(), minlength=count + 1)
                sizes[0] = overlap[0] = 0.0  # background
                medians = component_medians(components, count, case[3]) if len(candidates) > 1 else None
                for n, e in enumerate(candidates):
                    enhanced = sizes > 0 if e is None else medians >= e
                    for j, v in enumerate(min_volumes_mm3):
                        keep = enhanced & (sizes * voxel_mm3 >= v)
                        kept, hit = sizes[keep].sum(), overlap[keep].sum()
                        for k, m in enumerate(min_region_volumes_mm3):
                            emptied = m > 0 and kept * voxel_mm3 < m
                            scores[i, j, k, n] += _dice(0.0, 0.0, truth_sum) if emptied else _dice(hit, kept, truth_sum)
        scores /= len(cases)
        best = min(np.ndindex(*shape), key=lambda ijkl: (
            -round(scores[ijkl], 12), abs(thresholds[ijkl[0]] - 0.5), min_volumes_mm3[ijkl[1]],
            min_region_volumes_mm3[ijkl[2]], ijkl[3]))
        chosen["t"].append(float(thresholds[best[0]]))
        chosen["v"].append(float(min_volumes_mm3[best[1]]))
        chosen["m"].append(float(min_region_volumes_mm3[best[2]]))
        chosen["e"].append(candidates[best[3]])
        before.append(float(scores[default]))
        after.append(float(scores[best]))
    et_enhancement = chosen["e"][ET_CHANNEL]
    return {"region_thresholds": chosen["t"], "min_component_mm3": chosen["v"], "min_region_mm3": chosen["m"],
            "min_et_enhancement": None if et_enhancement is None else float(et_enhancement),
            "validation_dice_before": before, "validation_dice_after": after, "num_cases": len(cases)}


class PostprocessingFitter(BestModelFitter):
    """Ignite handler: when training completes, predict every validation case with the best model and record the
    post-processing :func:`fit` chose (``region_thresholds``, ``min_component_mm3``, ``min_region_mm3``,
    ``min_et_enhancement`` and the validation Dice before and after) in ``models/model.json``, which evaluate and
    inference read. Rank 0 only.

    Args:
        ckpt_path: the best ``model.pt`` (its ``model.json`` is updated).
        network: the training network (deep-copied; the best weights are loaded into the copy).
        dataset: the validation items after ``validate#preprocessing`` (``image`` 4HWD, ``label`` 3HWD regions, on
            the network's grid).
        inferer: the validation inferer (sliding window).
        enabled: false records nothing (the thresholds stay 0.5, no component is removed and the enhancement rule
            stays off).
    """

    def __init__(self, ckpt_path: str, network: torch.nn.Module, dataset: Any, inferer: Any, device: Any = "cpu",
                 enabled: bool = True) -> None:
        super().__init__(ckpt_path, network, device)
        self.dataset, self.inferer, self.enabled = dataset, inferer, bool(enabled)

    def fit(self, network: torch.nn.Module) -> dict[str, Any]:
        if not self.enabled:
            return {}
        cases = []
        with torch.no_grad():
            for index in range(len(self.dataset)):
                item = self.dataset[index]
                logits = self.inferer(item["image"][None].to(self.device), network)[0]
                affine = getattr(item["image"], "affine", None)
                cases.append((torch.sigmoid(logits).cpu().numpy(), np.asarray(item["label"]) > 0.5,
                              voxel_volume_mm3(affine) if affine is not None else 1.0,
                              np.asarray(item["image"][ENHANCEMENT_CHANNEL].cpu())))
        result = fit(cases)
        record_settings(self.ckpt_path, {"region_thresholds": result["region_thresholds"],
                                         "min_component_mm3": result["min_component_mm3"],
                                         "min_region_mm3": result["min_region_mm3"],
                                         "min_et_enhancement": result["min_et_enhancement"],
                                         "postprocessing_fit": {k: result[k] for k in (
                                             "validation_dice_before", "validation_dice_after", "num_cases")}})
        logger.info("post-processing fitted on %d validation cases: thresholds %s, minimum component volume %s mm³, "
                    "minimum region volume %s mm³ (TC, WT, ET), minimum ET enhancement (median T1ce z) %s; "
                    "validation Dice %s -> %s", result["num_cases"], result["region_thresholds"],
                    result["min_component_mm3"], result["min_region_mm3"], result["min_et_enhancement"],
                    [round(v, 4) for v in result["validation_dice_before"]],
                    [round(v, 4) for v in result["validation_dice_after"]])
        return result
