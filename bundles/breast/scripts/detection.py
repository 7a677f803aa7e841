"""Mass detection on full mammograms: data, boxes, the RetinaNet detector, engine steps, metrics and inference.

Boxes. Ground-truth boxes are the bounding boxes of the CBIS-DDSM ROI masks, one box per mask file (one abnormality
per row; two masks that touch stay two boxes; a mask in several pieces is one box around all of them), in pixel
edges: a mask whose foreground spans rows 10..19 gives ``y_min = 10, y_max = 20``. Inside the network boxes follow
MONAI's convention (coordinate i along tensor axis i, ``(row_min, col_min, row_max, col_max)`` for an ``(C, H, W)``
image); every file the workflow writes uses the DICOM convention ``x`` = column, ``y`` = row, in pixels of the
input DICOM (:func:`to_input_boxes` maps back and clips to the image).

Grid. The detector sees the mammogram resized by ``scale`` (area averaging; 0.5 for the 0.2 mm phantom gives
0.4 mm pixels); each image keeps its aspect ratio and MONAI's detector pads a batch to a multiple of 32.

Hit criterion (FROC, sensitivity, AUC of detected masses): a detection hits a mass when their boxes overlap with
IoU >= 0.3; each mass counts once (at the score of its best hit), further hits on a found mass are neither true nor
false positives, every detection hitting no mass is a false positive. AP50 matches one-to-one at IoU >= 0.5 (greedy
in score order, as PASCAL VOC / COCO), and is the area under the precision envelope (VOC all-point interpolation).
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from torch import nn

from common.checkpoint import unwrap
from common.validation import DatasetError, Problems, check_dir
from scripts.data import ID_COLUMNS, PATHOLOGY, check_dicom, csv_path, read_rows, resolve, split_by_patient
from scripts.dicom import read_dicom
from scripts.networks import ConvBlock

logger = logging.getLogger(__name__)

CLASS_NAMES = ("benign", "malignant")
FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
HIT_IOU = 0.3
AP_IOU = 0.5
DETECTION_COLUMNS = ["image", "x_min", "y_min", "x_max", "y_max", "label", "score"]


# ---------------------------------------------------------------------------------------------------------------------
# boxes
# ---------------------------------------------------------------------------------------------------------------------
def mask_foreground(values: np.ndarray) -> np.ndarray:
    """Foreground of a ROI mask read by :func:`scripts.dicom.read_dicom`: pixels above its minimum (0/255 masks)."""
    values = np.asarray(values)
    return values > values.min() if values.size else np.zeros(values.shape, bool)


def mask_box(mask: np.ndarray, source: str | os.PathLike = "mask") -> np.ndarray:
    """Bounding box of the foreground of a 2D mask, ``(row_min, col_min, row_max, col_max)`` in pixel edges (the
    maxima are exclusive: last foreground index + 1), float32.

    Raises:
        ValueError: the mask is not 2D or has no foreground pixel (the message names ``source``).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"{source}: ROI mask must be 2D, got shape {mask.shape}.")
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError(f"{source}: ROI mask has no foreground pixel (an empty mask gives no box).")
    return np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1], dtype=np.float32)


def masks_to_boxes(masks: Sequence[np.ndarray], sources: Sequence[str] | None = None) -> np.ndarray:
    """One box per mask (:func:`mask_box`): ``(N, 4)`` float32, ``(0, 4)`` for no mask."""
    sources = list(sources) if sources is not None else [f"mask {i}" for i in range(len(masks))]
    boxes = [mask_box(m, s) for m, s in zip(masks, sources)]
    return np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)


def grid_shape(input_shape: Sequence[int], scale: float) -> tuple[int, int]:
    """The detector's grid for an ``(H, W)`` input: ``(max(round(H * scale), 1), max(round(W * scale), 1))``."""
    if not 0.0 < float(scale) <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}.")
    return max(int(round(input_shape[0] * scale)), 1), max(int(round(input_shape[1] * scale)), 1)


def to_grid_boxes(boxes: np.ndarray, input_shape: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """Input-pixel boxes ``(N, 4)`` (row/col order) to grid pixels, per axis factor grid / input."""
    f = np.array([grid[0] / input_shape[0], grid[1] / input_shape[1]] * 2, dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * f


def to_input_boxes(boxes: Any, input_shape: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """Grid boxes ``(N, 4)`` ``(row_min, col_min, row_max, col_max)`` back to the input DICOM's pixels, clipped to
    ``[0, H] x [0, W]``; returned in the DICOM convention ``(x_min, y_min, x_max, y_max)`` (x = column), float64.
    Boxes that collapse to zero area after clipping keep that area (callers drop them)."""
    b = np.asarray(torch.as_tensor(boxes).detach().cpu(), dtype=np.float64).reshape(-1, 4)
    f = np.array([input_shape[0] / grid[0], input_shape[1] / grid[1]] * 2)
    b = b * f
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, input_shape[0])
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, input_shape[1])
    return b[:, [1, 0, 3, 2]]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(N, M)`` of axis-aligned boxes ``(x_min, y_min, x_max, y_max)`` (either convention works)."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# data set (CBIS-DDSM layout)
# ---------------------------------------------------------------------------------------------------------------------
def _image_id(cell: str) -> str:
    """The case folder of a CBIS-DDSM full-image path cell, e.g. ``Mass-Training_P_00001_LEFT_CC``."""
    return cell.strip().replace("\\", "/").split("/")[0]


def load_images(dataset_dir: str | os.PathLike, split: str, problems: Problems) -> list[dict[str, Any]]:
    """The mammograms of one split: ``{"case", "patient", "image", "masks", "labels", "boxes", "input_shape"}``.

    Mass rows (``mass_case_description_<split>_set.csv``) are grouped by their full mammogram (several masses per
    image); every ROI mask must have the image's size and a foreground (its box, in input pixels, row/col order).
    Images named only in ``calc_case_description_<split>_set.csv`` (when present) are mass-negative images (no box).
    Every problem is recorded in ``problems`` naming CSV line, case and file.
    """
    root = Path(str(dataset_dir))
    path = csv_path(root, split)
    by_image: dict[str, dict[str, Any]] = {}
    for line, row in enumerate(read_rows(path, problems, ID_COLUMNS + ("pathology", "image file path",
                                                                     "ROI mask file path")), start=2):
        where = f"{path.name} line {line}"
        pathology = row["pathology"].upper()
        if pathology not in PATHOLOGY:
            problems.add(where, f"unknown pathology {row['pathology']!r} (expected one of {list(PATHOLOGY)})")
            continue
        full, reason = resolve(root, row["image file path"], "image file path")
        mask, mask_reason = resolve(root, row["ROI mask file path"], "ROI mask file path")
        if full is None or mask is None:
            problems.add(where, reason or mask_reason)
            continue
        item = by_image.setdefault(str(full), {"case": _image_id(row["image file path"]), "patient": row["patient_id"],
                                               "image": str(full), "masks": [], "labels": [], "where": where})
        item["masks"].append(str(mask))
        item["labels"].append(PATHOLOGY[pathology])
    calc = root / f"calc_case_description_{split}_set.csv"
    if calc.is_file():
        for line, row in enumerate(read_rows(calc, problems, ("patient_id", "image file path")), start=2):
            full, reason = resolve(root, row["image file path"], "image file path")
            if full is None:
                problems.add(f"{calc.name} line {line}", reason)
            elif str(full) not in by_image:
                by_image[str(full)] = {"case": _image_id(row["image file path"]), "patient": row["patient_id"],
                                       "image": str(full), "masks": [], "labels": [],
                                       "where": f"{calc.name} line {line}"}
    items = []
    for item in by_image.values():
        size = check_dicom(Path(item["image"]), problems, f"{item['where']} ({item['case']})")
        boxes, ok = [], size is not None
        for mask_file in item["masks"]:
            mask_size = check_dicom(Path(mask_file), problems, f"{item['where']} ({item['case']})")
            if mask_size is None or size is None:
                ok = False
                continue
            if mask_size != size:
                problems.add(mask_file, f"ROI mask {mask_size} and full image {item['image']} {size} differ in size")
                ok = False
                continue
            try:
                boxes.append(mask_box(mask_foreground(read_dicom(mask_file)), mask_file))
            except ValueError as e:
                problems.add(mask_file, str(e).split(": ", 1)[-1])
                ok = False
        if ok:
            item["boxes"] = np.stack(boxes).tolist() if boxes else []
            item["input_shape"] = list(size)
            items.append(item)
    return items


def validate(dataset_dir: str | os.PathLike, splits: Sequence[str] = ("train",)) -> dict[str, list[dict[str, Any]]]:
    """Check the data set before any compute (every problem at once) and return the mammograms of each split.

    Raises:
        common.validation.DatasetError: missing folder/CSV, unresolvable rows, unreadable DICOM, mask/image size
            mismatch, empty mask, a split without a usable mammogram; each names its file.
    """
    problems = Problems(f"CBIS-DDSM mass detection dataset {dataset_dir}")
    if not check_dir(str(dataset_dir), problems, "dataset folder", override="--dataset_dir"):
        problems.raise_if_any()
    loaded = {split: load_images(dataset_dir, split, problems) for split in splits}
    problems.raise_if_any()
    for split, items in loaded.items():
        if not items:
            raise DatasetError(str(csv_path(dataset_dir, split)), [(str(csv_path(dataset_dir, split)),
                                                                     "split has no usable mammogram")])
    return loaded


def prepare_synthetic(dataset_dir: str | os.PathLike, synthetic_dir: str | os.PathLike, num_cases: int = 120,
                      seed: int = 0, image_size: Sequence[int] = (512, 384)) -> None:
    """Write the synthetic detection set into ``dataset_dir`` on first use, only when it is the default
    ``synthetic_dir`` (:func:`common.synthetic.ensure_synthetic`: one process writes, the others wait)."""
    from common.synthetic import ensure_synthetic
    from scripts.phantom_detection import synthesize

    ensure_synthetic(dataset_dir, synthetic_dir, lambda folder: synthesize(
        folder, num_cases=int(num_cases), seed=int(seed), image_size=tuple(int(v) for v in image_size)))


def training_split(dataset_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None,
                   val_fraction: float = 0.2, seed: int = 0, synthetic: dict[str, Any] | None = None
                   ) -> dict[str, list[dict[str, Any]]]:
    """The checked ``{"train": [...], "validation": [...]}`` mammograms of the train CSVs for training (the one data
    preparation form of every bundle, as the classifier's ``scripts.data.training_split``).

    ``synthetic`` (keyword arguments of :func:`prepare_synthetic`) generates the bundle's synthetic detection set
    first when ``dataset_dir`` is its default location and still empty. The hold-out is seeded, by patient (a
    patient's CC and MLO views stay together) and stratified by "has a malignant mass"
    (:func:`scripts.data.split_by_patient`); the split (image case ids) is written to ``<output_dir>/splits.json``
    and read back from there when present.

    Raises:
        common.validation.DatasetError: every problem of the train CSVs listed (:func:`validate`), a
            ``splits.json`` that does not match the data, or fewer than 2 patients (the train CSV named).
    """
    if synthetic:
        prepare_synthetic(dataset_dir, **synthetic)
    items = validate(dataset_dir, ("train",))["train"]
    return split_by_patient(dataset_dir, output_dir, items, val_fraction, seed,
                            {i["case"]: int(max(i["labels"], default=0)) for i in items})


def evaluation_cases(dataset_dir: str | os.PathLike, synthetic: dict[str, Any] | None = None
                     ) -> list[dict[str, Any]]:
    """The checked mammograms of the test CSVs (evaluation); ``synthetic`` as in :func:`training_split`.

    Raises:
        common.validation.DatasetError: every problem of the test split listed (see :func:`validate`).
    """
    if synthetic:
        prepare_synthetic(dataset_dir, **synthetic)
    return validate(dataset_dir, ("test",))["test"]


class LoadMammogramd:
    """Read an item's full mammogram, resize it by ``scale`` (area averaging) and its boxes with it.

    In: ``{"image": path, "boxes": [[r0, c0, r1, c1], ...] (input pixels, optional), "labels": [0/1, ...]}``. Out:
    ``image`` ``(1, h, w)`` float32 (larger = denser, :func:`scripts.dicom.read_dicom`), ``boxes`` ``(N, 4)``
    float32 in grid pixels, ``labels`` ``(N,)`` int64, ``input_shape`` ``(H, W)`` and ``grid_shape`` ``(h, w)``.

    Raises:
        scripts.dicom.DicomError: unreadable image (names the file).
        ValueError: a box outside the image (names the file).
    """

    def __init__(self, scale: float = 0.5) -> None:
        self.scale = float(scale)
        grid_shape((1, 1), self.scale)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        image = read_dicom(d["image"])
        shape = tuple(image.shape)
        grid = grid_shape(shape, self.scale)
        boxes = np.asarray(d.get("boxes", []), dtype=np.float32).reshape(-1, 4)
        if boxes.size and (boxes.min() < 0 or np.any(boxes[:, 2] > shape[0]) or np.any(boxes[:, 3] > shape[1])
                           or np.any(boxes[:, 2:] <= boxes[:, :2])):
            raise ValueError(f"{d['image']}: a ground-truth box {boxes.tolist()} lies outside the {shape} image or "
                             f"is empty.")
        t = torch.as_tensor(image)[None, None]
        d["image"] = torch.nn.functional.interpolate(t, size=grid, mode="area")[0].numpy().astype(np.float32)
        d["boxes"] = torch.as_tensor(to_grid_boxes(boxes, shape, grid))
        d["labels"] = torch.as_tensor(np.asarray(d.get("labels", []), dtype=np.int64).reshape(-1))
        d["input_shape"], d["grid_shape"], d["path"] = list(shape), list(grid), str(data["image"])
        d.pop("masks", None)
        return d


# ---------------------------------------------------------------------------------------------------------------------
# network
# ---------------------------------------------------------------------------------------------------------------------
class HadushFPN(nn.Module):
    """The five convolution blocks of Hadush et al. 2020 (:class:`scripts.networks.ConvBlock`) with MONAI's feature
    pyramid on the outputs of blocks ``levels`` (0-based; block k has stride 2^(k+1)).

    Input ``(B, in_channels, H, W)`` with H, W multiples of 2^(max(levels)+1); output an ordered dict of
    ``(B, out_channels, H / s, W / s)`` maps, finest first. ``out_channels`` is what MONAI's RetinaNet reads.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (8, 16, 32, 64, 128),
                 out_channels: int = 32, levels: Sequence[int] = (2, 3, 4), dropout: float = 0.1) -> None:
        from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork

        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) != 5 or min(channels) < 1:
            raise ValueError(f"channels must list five positive widths (one per block), got {channels}.")
        self.levels = [int(v) for v in levels]
        if not self.levels or sorted(set(self.levels)) != self.levels or not 0 <= self.levels[0] <= self.levels[-1] < 5:
            raise ValueError(f"levels must be increasing block indices in 0..4, got {list(levels)}.")
        widths = [int(in_channels)] + channels
        self.features = nn.Sequential(*[ConvBlock(widths[i], widths[i + 1], dropout)
                                        for i in range(self.levels[-1] + 1)])
        self.fpn = FeaturePyramidNetwork(2, [channels[i] for i in self.levels], int(out_channels))
        self.out_channels = int(out_channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = OrderedDict()
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.levels:
                maps[str(i)] = x
        return self.fpn(maps)


def build_detector(channels: Sequence[int] = (8, 16, 32, 64, 128), fpn_channels: int = 32,
                   levels: Sequence[int] = (2, 3, 4), anchor_sizes: Sequence[Sequence[int]] = ((12, 12), (20, 20),
                                                                                             (28, 28)),
                   dropout: float = 0.1, score_thresh: float = 0.02, nms_thresh: float = 0.3,
                   detections_per_img: int = 30, num_candidates: int = 4, negatives_per_image: int = 64) -> nn.Module:
    """MONAI's RetinaNet detector (``monai.apps.detection``) on :class:`HadushFPN`, two classes (benign, malignant).

    Anchors: ``anchor_sizes`` (rows, cols) at the finest level, doubled per coarser level; ATSS matching; hard
    negative sampling; sigmoid class scores, class-wise NMS at ``nms_thresh`` (:func:`merge_classes` then merges the
    classes). Call ``detector(images)`` in eval mode for detections, in train mode with targets for losses.
    """
    from monai.apps.detection.networks import retinanet_detector
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.networks.retinanet_network import RetinaNet
    from monai.utils import optional_import

    if not optional_import("torchvision")[1]:
        # MONAI 1.6 tests ``isinstance(matcher, torchvision Matcher)`` before trying its own ATSS matcher, and that
        # test raises when torchvision is absent (this project must not install it: it pins its own torch). With a
        # stand-in class the test is False and MONAI's ATSS branch, which needs no torchvision, runs.
        retinanet_detector.Matcher = type("TorchvisionMatcherUnavailable", (), {})
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

    levels = [int(v) for v in levels]
    extractor = HadushFPN(1, channels, fpn_channels, levels, dropout)
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=[2 ** (v - levels[0]) for v in levels],
                                             base_anchor_shapes=[tuple(int(s) for s in a) for a in anchor_sizes])
    network = RetinaNet(spatial_dims=2, num_classes=len(CLASS_NAMES), num_anchors=len(anchor_sizes),
                        feature_extractor=extractor, size_divisible=2 ** (levels[-1] + 1))
    detector = RetinaNetDetector(network=network, anchor_generator=anchors)
    detector.set_atss_matcher(num_candidates=int(num_candidates), center_in_gt=False)
    detector.set_hard_negative_sampler(batch_size_per_image=int(negatives_per_image), positive_fraction=0.3,
                                       pool_size=20, min_neg=16)
    detector.set_target_keys(box_key="boxes", label_key="labels")
    detector.set_box_selector_parameters(score_thresh=float(score_thresh), topk_candidates_per_level=200,
                                         nms_thresh=float(nms_thresh), detections_per_img=int(detections_per_img))
    return detector


def merge_classes(boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, iou: float = HIT_IOU) -> list[dict]:
    """One detection per mass from class-wise detections: greedy in score order, every box overlapping the kept one
    with IoU >= ``iou`` joins it; ``score`` = the group's highest score, ``p_malignant`` = s_m / (s_b + s_m) from the
    group's best benign and malignant scores, ``label`` = the kept box's class. Returns dicts sorted by score."""
    boxes, labels, scores = np.asarray(boxes, float).reshape(-1, 4), np.asarray(labels).reshape(-1), \
        np.asarray(scores, float).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    used = np.zeros(len(scores), bool)
    out = []
    ious = box_iou(boxes, boxes)
    for i in order:
        if used[i]:
            continue
        group = (~used) & (ious[i] >= iou)
        group[i] = True
        used |= group
        best = [float(scores[group & (labels == c)].max(initial=0.0)) for c in range(len(CLASS_NAMES))]
        out.append({"box": boxes[i].tolist(), "score": float(scores[i]), "label": CLASS_NAMES[int(labels[i])],
                    "p_malignant": best[1] / (best[0] + best[1]) if best[0] + best[1] > 0 else 0.5})
    return out


# ---------------------------------------------------------------------------------------------------------------------
# engine steps
# ---------------------------------------------------------------------------------------------------------------------
def train_iteration(engine: Any, batch: list[dict]) -> list[dict[str, Any]]:
    """One training step of ``engine.network`` (the detector, possibly in DistributedDataParallel) on a list batch
    (``monai.data.utils.no_collation``); the loss is classification + box regression. Returns ``[{"loss", ...}]``:
    one dict in a list, the decollated form MONAI's handlers read with ``from_engine(["loss"], first=True)``
    (``StatsHandler``, and the ``MLFlowHandler`` that ``--tracking mlflow`` adds)."""
    net, device = engine.network, engine.state.device
    detector = unwrap(net)
    net.train()
    images = [torch.as_tensor(b["image"]).to(device) for b in batch]
    targets = [{"boxes": torch.as_tensor(b["boxes"]).float().reshape(-1, 4).to(device),
                "labels": torch.as_tensor(b["labels"]).long().reshape(-1).to(device)} for b in batch]
    engine.optimizer.zero_grad(set_to_none=True)
    losses = net(images, targets)
    loss = losses[detector.cls_key] + losses[detector.box_reg_key]
    loss.backward()
    engine.optimizer.step()
    return [{"loss": loss.detach(), "loss_cls": losses[detector.cls_key].detach(),
             "loss_box": losses[detector.box_reg_key].detach()}]


def detect(network: nn.Module, images: Sequence[Any], device: Any = "cpu") -> list[list[dict]]:
    """Detections per image in grid pixels (row/col order): lists of :func:`merge_classes` dicts."""
    detector = unwrap(network)
    detector.eval()
    with torch.no_grad():
        outs = detector([torch.as_tensor(i).float().to(device) for i in images])
    return [merge_classes(o[detector.target_box_key].cpu().numpy(), o[detector.target_label_key].cpu().numpy(),
                          o[detector.pred_score_key].cpu().numpy()) for o in outs]


#: the columns of a :class:`DetectionInferer` table row (grid pixels; ``class`` indexes :data:`CLASS_NAMES`)
TABLE_COLUMNS = ("row_min", "col_min", "row_max", "col_max", "score", "class", "p_malignant")


def detection_table(found: Sequence[Sequence[dict]]) -> torch.Tensor:
    """:func:`detect`'s detections of B images as one float64 tensor ``(B, N, 7)`` of :data:`TABLE_COLUMNS` rows in
    score order (N = the most detections of any image; the rows past an image's own count are NaN)."""
    width = max((len(dets) for dets in found), default=0)
    table = torch.full((len(found), width, len(TABLE_COLUMNS)), float("nan"), dtype=torch.float64)
    for b, dets in enumerate(found):
        for k, d in enumerate(dets):
            table[b, k] = torch.tensor([*d["box"], d["score"], CLASS_NAMES.index(d["label"]), d["p_malignant"]],
                                       dtype=torch.float64)
    return table


def table_detections(table: Any) -> list[dict]:
    """One image's :func:`detection_table` ``(N, 7)`` back to :func:`merge_classes` dicts (NaN rows dropped)."""
    rows = np.asarray(torch.as_tensor(table).detach().cpu(), dtype=np.float64).reshape(-1, len(TABLE_COLUMNS))
    return [{"box": r[:4].tolist(), "score": float(r[4]), "label": CLASS_NAMES[int(r[5])], "p_malignant": float(r[6])}
            for r in rows[~np.isnan(rows[:, 4])]]


class DetectionInferer(Inferer):
    """:func:`detect` as a MONAI inferer (the ``inferer`` of ``inference_detection.json``'s evaluator).

    ``inputs``: ``(B, 1, h, w)`` images on the detector's grid; returns :func:`detection_table` ``(B, N, 7)``
    (float64, grid pixels, row/col order): a tensor, so that the evaluator's decollation gives each case its own
    ``(N, 7)`` table in ``pred`` (read by :class:`InputDetectionsd`).
    """

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        return detection_table(detect(network, list(inputs), inputs.device))


class InputDetectionsd:
    """Postprocessing of one case of detection inference: the :class:`DetectionInferer` table in ``pred`` (grid
    pixels) becomes the list of detections scoring >= ``score_threshold``, in pixels of the input DICOM
    (:func:`to_input_boxes` with the case's ``input_shape`` and ``grid_shape``: clipped to the image, DICOM
    convention x = column), each ``{"x_min", "y_min", "x_max", "y_max", "label", "score", "p_malignant"}``, in score
    order; a box with nothing left inside the image is dropped. An image without one is a valid negative (``[]``).

    Raises:
        ValueError: ``score_threshold`` outside [0, 1] (when constructed, before any input is read).
    """

    def __init__(self, score_threshold: float = 0.3) -> None:
        self.score_threshold = float(score_threshold)
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}.")

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        kept = []
        for det in table_detections(d["pred"]):
            if det["score"] < self.score_threshold:
                continue
            x0, y0, x1, y1 = to_input_boxes(np.asarray(det["box"])[None], d["input_shape"], d["grid_shape"])[0]
            if x1 <= x0 or y1 <= y0:
                continue  # nothing of the box left inside the image
            kept.append({"x_min": float(x0), "y_min": float(y0), "x_max": float(x1), "y_max": float(y1),
                         "label": det["label"], "score": det["score"], "p_malignant": det["p_malignant"]})
        d["pred"] = kept
        return d


def image_row(case: str, detections: list[dict], gt_boxes: np.ndarray, gt_labels: Sequence[int]) -> dict[str, Any]:
    """The per-image evaluation row: detections (input pixels, DICOM convention) matched to the masses.

    ``detections`` (JSON): ``[score, p_malignant, hit, hit50]`` per detection in score order; ``hit`` = index of the
    mass it hits at IoU >= 0.3 (its best), -1 for none; ``hit50`` = index of the mass it matches one-to-one at
    IoU >= 0.5, -1 for none. ``lesions`` (JSON): the masses' labels (1 = malignant).
    """
    dets = sorted(detections, key=lambda d: -d["score"])
    boxes = np.array([d["box"] for d in dets], float).reshape(-1, 4)
    gt = np.asarray(gt_boxes, float).reshape(-1, 4)
    ious = box_iou(boxes, gt) if len(gt) and len(boxes) else np.zeros((len(boxes), len(gt)))
    taken50 = set()
    table = []
    for k, d in enumerate(dets):
        hit = int(np.argmax(ious[k])) if len(gt) and ious[k].max() >= HIT_IOU else -1
        hit50 = -1
        for j in np.argsort(-ious[k]) if len(gt) else []:
            if ious[k, j] >= AP_IOU and int(j) not in taken50:
                hit50 = int(j)
                taken50.add(hit50)
                break
        table.append([round(float(d["score"]), 6), round(float(d["p_malignant"]), 6), hit, hit50])
    labels = [int(v) for v in gt_labels]
    return {"case": case, "num_masses": len(labels), "num_malignant": int(sum(labels)),
            "num_detections": len(dets), "found": len({t[2] for t in table if t[2] >= 0}),
            "lesions": json.dumps(labels), "detections": json.dumps(table)}


def eval_iteration(engine: Any, batch: list[dict]) -> dict[str, Any]:
    """Detect on a list batch; return ``{"rows": [image_row...], "detections": [...]}`` (input pixels)."""
    dets = detect(engine.network, [b["image"] for b in batch], engine.state.device)
    rows, mapped = [], []
    for b, found in zip(batch, dets):
        shape, grid = b["input_shape"], b["grid_shape"]
        for d in found:
            d["box"] = to_input_boxes(np.asarray(d["box"])[None], shape, grid)[0].tolist()
        gt = to_input_boxes(np.asarray(b["boxes"]).reshape(-1, 4), shape, grid) if len(b["boxes"]) else \
            np.zeros((0, 4))
        rows.append(image_row(b["case"], found, gt, np.asarray(b["labels"]).reshape(-1).tolist()))
        mapped.append(found)
    return {"rows": rows, "detections": mapped}


def case_rows(engine: Any) -> list[dict[str, Any]]:
    """The rows of the evaluator's current batch (for ``common.handlers.EvaluationWriter``)."""
    return list(engine.state.output["rows"])


# ---------------------------------------------------------------------------------------------------------------------
# metrics over image rows
# ---------------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=100_000)
def _parsed(text: str) -> list:
    return json.loads(text)


def _tables(rows: Sequence[dict]) -> tuple[list[list], list[list[int]]]:
    """The detection tables and mass labels of ``rows`` (JSON text parsed once per distinct text: the bootstrap
    resamples the same rows a thousand times)."""
    dets = [_parsed(r["detections"]) if isinstance(r["detections"], str) else r["detections"] for r in rows]
    les = [_parsed(r["lesions"]) if isinstance(r["lesions"], str) else r["lesions"] for r in rows]
    return dets, les


def froc_curve(rows: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Operating points of the FROC curve, one per distinct score threshold (highest first) after ``(0, 0)``:
    false positives per image and sensitivity (masses hit at IoU >= 0.3 by a detection scoring >= the threshold).
    Returns ``(fps_per_image, sensitivity)``; empty arrays beyond the origin when no image has a mass."""
    dets, les = _tables(rows)
    n_images, n_masses = len(rows), sum(len(v) for v in les)
    tp_scores, fp_scores = [], []
    for table, lesions in zip(dets, les):
        best = {}
        for score, _, hit, _ in table:
            if hit >= 0:
                best[hit] = max(best.get(hit, 0.0), score)
            else:
                fp_scores.append(score)
        tp_scores += list(best.values())
    if n_masses == 0 or n_images == 0:
        return np.zeros(1), np.zeros(1)
    tp, fp = np.sort(np.array(tp_scores, float)), np.sort(np.array(fp_scores, float))
    thresholds = np.unique(np.concatenate([tp, fp]))[::-1]
    # counts of scores >= each threshold, from the sorted scores
    fps = np.concatenate([[0.0], (len(fp) - np.searchsorted(fp, thresholds, side="left")) / n_images])
    sens = np.concatenate([[0.0], (len(tp) - np.searchsorted(tp, thresholds, side="left")) / n_masses])
    return fps, sens


def sensitivities_at(rows: Sequence[dict], fp_rates: Sequence[float]) -> list[float] | None:
    """For each rate, the highest sensitivity among operating points with at most that many false positives per
    image (a step curve: no interpolation between operating points); None without masses."""
    if sum(len(v) for v in _tables(rows)[1]) == 0:
        return None
    fps, sens = froc_curve(rows)
    return [float(sens[fps <= f + 1e-12].max()) for f in fp_rates]


def sensitivity_at(rows: Sequence[dict], fp_rate: float) -> float | None:
    """:func:`sensitivities_at` for one rate."""
    values = sensitivities_at(rows, [fp_rate])
    return None if values is None else values[0]


def froc(rows: Sequence[dict]) -> float | None:
    """Mean sensitivity at 0.25, 0.5, 1, 2, 4 and 8 false positives per image (:func:`sensitivities_at`)."""
    values = sensitivities_at(rows, FP_RATES)
    return None if values is None else float(np.mean(values))


def sensitivity_at_1fp(rows: Sequence[dict]) -> float | None:
    """Sensitivity at one false positive per image (:func:`sensitivity_at`)."""
    return sensitivity_at(rows, 1.0)


def ap50(rows: Sequence[dict]) -> float | None:
    """Average precision at IoU >= 0.5 (one-to-one matches, all-point interpolated), class-agnostic; None without
    masses."""
    dets, les = _tables(rows)
    n_masses = sum(len(v) for v in les)
    if n_masses == 0:
        return None
    flat = sorted(((d[0], d[3] >= 0) for table in dets for d in table), key=lambda t: -t[0])
    if not flat:
        return 0.0
    hits = np.array([h for _, h in flat], float)
    tp = np.cumsum(hits)
    precision, recall = tp / np.arange(1, len(hits) + 1), tp / n_masses
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * envelope))


def auc_malignant(rows: Sequence[dict]) -> float | None:
    """AUC of p_malignant, benign vs malignant, over the masses detected (hit at IoU >= 0.3; the best-scoring hit's
    p_malignant); None when the detected masses are of one class only (MONAI's AUC, ``common.classification``)."""
    from common.classification import roc_auc

    dets, les = _tables(rows)
    y, p = [], []
    for table, lesions in zip(dets, les):
        seen = set()
        for _, pm, hit, _ in table:
            if hit >= 0 and hit not in seen:
                seen.add(hit)
                y.append(lesions[hit])
                p.append(pm)
    return roc_auc(y, p) if len(set(y)) == 2 else None


class DetectionMetric:
    """Ignite metric over an evaluator's image rows (``output["rows"]``) computing one of the functions above
    (default :func:`froc`); the training's validation key metric."""

    def __new__(cls, fn: Callable[[Sequence[dict]], float | None] = froc) -> Any:
        from ignite.metrics import Metric

        class _Metric(Metric):
            def reset(self) -> None:
                self.rows: list[dict] = []

            def update(self, output: Any) -> None:
                self.rows.extend(output)

            def compute(self) -> float:
                value = fn(self.rows) if self.rows else None
                return float("nan") if value is None else float(value)

        return _Metric(output_transform=lambda x: list(x["rows"]))


def write_froc_curve(output_dir: str | os.PathLike, title: str = "Mass detection, test split") -> str | None:
    """Plot ``metrics_per_case.csv`` of ``output_dir`` as ``froc_curve.png`` (log FP axis, the six FROC rates
    marked); returns the path, or None when the table holds no mass."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.io import save_figure

    with open(Path(str(output_dir)) / "metrics_per_case.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    fps, sens = froc_curve(rows)
    if len(fps) < 2:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.step(np.maximum(fps, 1e-2), sens, where="post", color="tab:green")
    marks = [sensitivity_at(rows, r) for r in FP_RATES]
    ax.plot(FP_RATES, marks, "o", color="black", label=f"FROC = {np.mean(marks):.3f}")
    ax.set(xscale="log", xlim=(0.1, 16), ylim=(0, 1.02), xlabel="false positives per image", ylabel="sensitivity",
           title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return save_figure(fig, Path(str(output_dir)) / "froc_curve.png")


class FrocCurveWriter:
    """Ignite handler: at the end of the evaluation epoch write ``froc_curve.png`` (after EvaluationWriter)."""

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.output_dir = str(output_dir)

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        from common.distributed import is_rank0

        engine.add_event_handler(Events.EPOCH_COMPLETED,
                                 lambda _: write_froc_curve(self.output_dir) if is_rank0() else None)
