"""Per-case uncertainty of the segmentation bundles: test-time augmentation, predictive entropy, conformal intervals.

* :class:`TTAInferer` wraps a bundle's own inferer (``SlidingWindowInferer``, ``SliceInferer``): it runs the network
  on ``tta_samples`` augmented copies of the input (flips along spatial axes, inverted before averaging, and the
  bundle's cheap intensity augmentations), applies the bundle's activation (sigmoid or softmax) to each, averages the
  *probabilities* and returns them as logits of that mean (``log p`` for softmax, ``logit p`` for sigmoid), so the
  bundle's unchanged postprocessing (``Activationsd``, ``Invertd``, ``AsDiscreted``) gives the mean probability and
  the mask from it. Test-time augmentation as an uncertainty estimate: Wang et al., "Aleatoric uncertainty
  estimation with test-time augmentation for medical image segmentation", Neurocomputing 338:34-45, 2019.
* :func:`predictive_entropy` (nats) of the mean probability, as a postprocessing step (:class:`PredictiveEntropyd`)
  after the probabilities are back in the input grid, so inference and evaluate share it: categorical entropy
  ``-sum_c p_c ln p_c`` for softmax outputs; for independent sigmoid channels (brain's three regions, eye's vessel
  channel) the sum of the binary entropies ``-p ln p - (1 - p) ln(1 - p)``.
* :func:`case_score`: the mean entropy over the predicted foreground and a boundary band of ``band`` voxels around it
  (binary dilation), the per-case number of ``uncertainty.csv``.
* Checks that the uncertainty is worth looking at: :func:`uncertainty_error_auc` (AUROC of the voxel uncertainty for
  wrong vs right voxels inside the bounding box of truth union prediction) and :func:`uncertainty_case_spearman`.
* Split conformal prediction (Angelopoulos & Bates, "A Gentle Introduction to Conformal Prediction and
  Distribution-Free Uncertainty Quantification", 2021, sections 1 and 2.3; Vovk et al., "Algorithmic Learning in a
  Random World", 2005) with a normalised score ``|y - y_hat| / sigma``: :func:`conformal_quantile`,
  :func:`conformal_interval`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from monai.transforms import MapTransform, Randomizable

ACTIVATIONS = ("sigmoid", "softmax")
#: Probabilities are clamped to [EPS, 1 - EPS] before they are turned back into logits (float32-safe).
EPS = 1e-7


def _check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def flip_combinations(flip_axes: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """The spatial axes flipped in each of ``n`` TTA samples: sample ``s`` flips the axes whose bit is set in
    ``s mod 2**len(flip_axes)`` (sample 0 flips nothing), so 8 samples over three axes cover every flip once."""
    axes = [int(a) for a in flip_axes]
    return [tuple(a for bit, a in enumerate(axes) if (s % (2 ** len(axes))) >> bit & 1) for s in range(int(n))]


class TTAInferer(Inferer):
    """Test-time augmentation around a bundle's inferer; returns the logits of the mean probability.

    Sample 0 is the plain input; sample ``s > 0`` flips the spatial axes given by :func:`flip_combinations` and
    applies the ``intensity`` transforms (MONAI array transforms such as ``RandAdjustContrast``,
    ``RandScaleIntensity``, ``RandGaussianNoise``), each re-seeded with ``seed + s`` per call, so a case gets the
    same augmentations whatever came before it (deterministic given ``seed``). Each sample's output goes through
    ``activation``, is flipped back, and the probabilities are averaged.

    After a call, :attr:`sample_counts` holds, per sample, the number of voxels of each class in the network's grid:
    ``(S, B, C)`` (softmax: argmax class; sigmoid: channel above 0.5). The cardiac bundle turns them into the TTA
    spread of its volumes and ejection fractions (the normaliser of its conformal intervals).

    Args:
        inferer: the bundle's inferer, called as ``inferer(inputs, network)``.
        tta_samples: number of samples ``S`` (>= 1).
        activation: ``"sigmoid"`` (independent channels) or ``"softmax"`` (classes on the channel axis).
        flip_axes: spatial axes (0 = first spatial axis) that the samples flip.
        intensity: intensity transforms applied to each image of the batch of samples ``s > 0``.
        seed: the seed of the intensity transforms.
        enabled: ``False`` makes the call exactly ``inferer(inputs, network)`` (the bundle's ``uncertainty`` id).

    Raises:
        ValueError: ``tta_samples`` < 1, an unknown activation, a flip axis outside the input's spatial axes.
    """

    def __init__(self, inferer: Callable, tta_samples: int = 8, activation: str = "softmax",
                 flip_axes: Sequence[int] = (), intensity: Sequence[Callable] = (), seed: int = 0,
                 enabled: bool = True) -> None:
        super().__init__()
        if isinstance(tta_samples, bool) or int(tta_samples) != tta_samples or int(tta_samples) < 1:
            raise ValueError(f"tta_samples must be a whole number >= 1, got {tta_samples!r}")
        self.inferer, self.tta_samples = inferer, int(tta_samples)
        self.activation = _check_activation(activation)
        self.flip_axes, self.intensity = [int(a) for a in flip_axes], list(intensity or [])
        self.seed, self.enabled = int(seed), bool(enabled)
        self.sample_counts: torch.Tensor | None = None

    def _augment(self, inputs: torch.Tensor, s: int) -> torch.Tensor:
        if s == 0 or not self.intensity:
            return inputs
        out = []
        for b in range(inputs.shape[0]):
            image = inputs[b]
            for k, transform in enumerate(self.intensity):
                if isinstance(transform, Randomizable):
                    transform.set_random_state(seed=(self.seed + 1000 * s + k) % (2 ** 32))
                image = torch.as_tensor(transform(image), dtype=inputs.dtype, device=inputs.device)
            out.append(image)
        return torch.stack(out)

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        """The bundle's activation of a network output ``(B, C, *spatial)``."""
        return torch.sigmoid(output) if self.activation == "sigmoid" else torch.softmax(output, dim=1)

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``(B, C_in, *spatial)`` input -> ``(B, C, *spatial)`` logits of the mean probability over the samples.

        Raises:
            ValueError: a flip axis that the input does not have.
        """
        if not self.enabled:
            self.sample_counts = None
            return self.inferer(inputs, network, *args, **kwargs)
        spatial = inputs.ndim - 2
        if any(not 0 <= a < spatial for a in self.flip_axes):
            raise ValueError(f"flip_axes {self.flip_axes} are not spatial axes of a {spatial}D input")
        total, counts = None, []
        for s, flips in enumerate(flip_combinations(self.flip_axes, self.tta_samples)):
            dims = [a + 2 for a in flips]
            x = self._augment(inputs, s)
            x = torch.flip(x, dims) if dims else x
            prob = self.probabilities(torch.as_tensor(self.inferer(x, network, *args, **kwargs)).float())
            prob = torch.flip(prob, dims) if dims else prob
            counts.append(class_counts(prob, self.activation))
            total = prob if total is None else total + prob
        mean = (total / self.tta_samples).clamp(EPS, 1.0 - EPS)
        self.sample_counts = torch.stack(counts).cpu()
        if self.activation == "sigmoid":
            return torch.log(mean) - torch.log1p(-mean)
        return torch.log(mean)


def class_counts(prob: torch.Tensor, activation: str) -> torch.Tensor:
    """``(B, C)`` voxel count per class of ``(B, C, *spatial)`` probabilities: argmax class (softmax) or channel
    above 0.5 (sigmoid)."""
    flat = prob.flatten(2)
    if _check_activation(activation) == "sigmoid":
        return (flat > 0.5).sum(-1).float()
    label = flat.argmax(1)
    return torch.stack([(label == c).sum(-1) for c in range(prob.shape[1])], dim=1).float()


def predictive_entropy(prob: Any, activation: str) -> torch.Tensor:
    """Voxel-wise predictive entropy in nats of a ``(C, *spatial)`` probability map -> ``(*spatial)`` float32.

    ``softmax``: ``-sum_c p_c ln p_c`` (between 0 and ``ln C``); ``sigmoid``: the sum over channels of
    ``-p ln p - (1 - p) ln(1 - p)`` (between 0 and ``C ln 2``). ``0 ln 0 = 0``.

    Raises:
        ValueError: an unknown activation, or probabilities outside [0, 1].
    """
    p = torch.as_tensor(prob).detach().float()
    if _check_activation(activation) and p.numel() and (p.min() < -1e-6 or p.max() > 1 + 1e-6):
        raise ValueError(f"probabilities must lie in [0, 1], got [{float(p.min())}, {float(p.max())}]")
    p = p.clamp(0.0, 1.0)
    h = -torch.special.xlogy(p, p)
    if activation == "sigmoid":
        h = h - torch.special.xlogy(1.0 - p, 1.0 - p)
    return h.sum(0)


def max_entropy(channels: int, activation: str) -> float:
    """The largest possible :func:`predictive_entropy` in nats: ``ln C`` (softmax) or ``C ln 2`` (sigmoid)."""
    return math.log(channels) if _check_activation(activation) == "softmax" else channels * math.log(2.0)


class PredictiveEntropyd(MapTransform):
    """Postprocessing step: ``d[output_key]`` = :func:`predictive_entropy` of ``d[key]`` with a channel axis of 1
    (``(1, *spatial)`` float32, nats), keeping the source's meta data. ``enabled=False`` leaves ``d`` unchanged.

    Place it where ``d[key]`` holds the mean probability in the input's grid (after ``Activationsd`` and
    ``Invertd``, before ``AsDiscreted``)."""

    def __init__(self, keys: Any, activation: str, output_key: str = "uncertainty", enabled: bool = True,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.activation, self.output_key, self.enabled = _check_activation(activation), output_key, bool(enabled)

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            source = d[key]
            h = predictive_entropy(source, self.activation)[None]
            if hasattr(source, "meta"):
                from monai.data import MetaTensor

                h = MetaTensor(h, affine=source.affine, meta=dict(source.meta))
            d[self.output_key] = h
        return d


def with_entropy(postprocessing: Any, entropy: Callable, before: str = "AsDiscreted") -> Any:
    """A copy of a MONAI ``Compose`` with ``entropy`` inserted before its first transform whose class name starts
    with ``before`` (at the end when there is none). Evaluate uses it to add :class:`PredictiveEntropyd` to the
    validation postprocessing of ``train.json`` without restating it."""
    from monai.transforms import Compose

    transforms = list(postprocessing.transforms)
    index = next((i for i, t in enumerate(transforms) if type(t).__name__.startswith(before)), len(transforms))
    return Compose(transforms[:index] + [entropy] + transforms[index:])


def _dilate(mask: np.ndarray, band: int, axes: Sequence[int] | None) -> np.ndarray:
    from scipy.ndimage import binary_dilation, generate_binary_structure

    if band <= 0 or not mask.any():
        return mask
    structure = generate_binary_structure(mask.ndim, 1)
    if axes is not None:  # dilate only along ``axes`` (e.g. in-plane for thick short-axis slices)
        keep = np.zeros_like(structure)
        centre = tuple(1 for _ in range(mask.ndim))
        for a in axes:
            for offset in (0, 2):
                index = list(centre)
                index[a] = offset
                keep[tuple(index)] = True
        keep[centre] = True
        structure = keep
    return binary_dilation(mask, structure=structure, iterations=int(band))


def case_score(entropy: Any, foreground: Any, band: int = 2, axes: Sequence[int] | None = None) -> float | None:
    """Mean entropy (nats) over the predicted foreground dilated by ``band`` voxels (the boundary band, 6-/4-
    connected steps; along ``axes`` only when given). ``entropy`` and ``foreground`` share the spatial shape.
    None when the prediction has no foreground (no region to score).

    Raises:
        ValueError: the two arrays differ in shape.
    """
    h, fg = _numpy(entropy).astype(np.float64), _numpy(foreground).astype(bool)
    if h.shape != fg.shape:
        raise ValueError(f"entropy shape {h.shape} differs from the foreground shape {fg.shape}")
    region = _dilate(fg, band, axes)
    return float(h[region].mean()) if region.any() else None


def _numpy(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def foreground_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box (slices) of the True voxels of ``mask``; None when there are none."""
    index = np.nonzero(mask)
    if not index[0].size:
        return None
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in index)


def uncertainty_error_auc(uncertainty: Any, wrong: Any, foreground: Any, valid: Any = None) -> float | None:
    """AUROC (scikit-learn ``roc_auc_score``) of the voxel ``uncertainty`` for telling ``wrong`` voxels from right
    ones, inside the bounding box of ``foreground`` (truth union prediction) and, when given, the ``valid`` mask
    (e.g. eye's field of view). All share one spatial shape. 1.0: every wrong voxel is more uncertain than every
    right one; 0.5: no better than chance. None when the box is empty or holds only right or only wrong voxels.

    Raises:
        ValueError: the arrays differ in shape.
    """
    h, err, fg = (np.squeeze(_numpy(a)) for a in (uncertainty, wrong, foreground))
    keep = np.ones(h.shape, bool) if valid is None else np.squeeze(_numpy(valid)).astype(bool)
    if not h.shape == err.shape == fg.shape == keep.shape:
        raise ValueError(f"shapes differ: uncertainty {h.shape}, wrong {err.shape}, foreground {fg.shape}, valid "
                         f"{keep.shape}")
    box = foreground_box(fg.astype(bool) & keep)
    if box is None:
        return None
    inside = keep[box]
    y, score = err[box][inside].astype(bool), h[box][inside].astype(np.float64)
    if y.all() or not y.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def uncertainty_case_spearman(rows: Sequence[Mapping[str, Any]], key_metric: str,
                              score: str = "uncertainty_score") -> float | None:
    """Spearman rank correlation (scipy) between the case ``score`` column and ``1 - key_metric`` over per-case rows
    (cases where either is undefined are left out). Positive: more uncertain cases are worse. None for fewer than
    three usable cases or a constant column. A ``dataset_metrics`` entry of ``common.handlers.EvaluationWriter``."""
    pairs = [(float(r[score]), 1.0 - float(r[key_metric])) for r in rows
             if r.get(score) not in (None, "") and r.get(key_metric) not in (None, "")
             and math.isfinite(float(r[score])) and math.isfinite(float(r[key_metric]))]
    if len(pairs) < 3:
        return None
    a, b = np.array(pairs).T
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    from scipy.stats import spearmanr

    value = float(spearmanr(a, b).statistic)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------------------------------------------------
# split conformal prediction
# --------------------------------------------------------------------------------------------------------------------
def conformal_quantile(scores: Sequence[float], alpha: float = 0.05) -> float:
    """The split-conformal quantile of calibration ``scores``: the ``ceil((n + 1)(1 - alpha))``-th smallest (the
    finite-sample correction of Angelopoulos & Bates 2021, eq. 1), so that a new exchangeable case's score is at
    most it with probability >= ``1 - alpha``. ``inf`` when ``n`` is too small (``ceil((n + 1)(1 - alpha)) > n``,
    i.e. fewer than ``1/alpha - 1`` cases): no finite interval has the guarantee.

    Raises:
        ValueError: ``alpha`` outside (0, 1), no score, or a NaN/negative score.
    """
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    s = np.sort(np.asarray(list(scores), dtype=np.float64))
    if s.size == 0 or np.isnan(s).any() or (s < 0).any():
        raise ValueError("conformal calibration needs at least one non-negative, non-NaN score")
    k = math.ceil((s.size + 1) * (1.0 - float(alpha)))
    return float("inf") if k > s.size else float(s[k - 1])


def normalised_scores(prediction: Sequence[float], truth: Sequence[float], sigma: Sequence[float],
                      floor: float) -> np.ndarray:
    """``|truth - prediction| / max(sigma, floor)``: the normalised conformity score (Angelopoulos & Bates 2021,
    section 2.3, with the TTA spread as the uncertainty scalar; ``floor`` > 0 keeps a zero spread finite)."""
    if not float(floor) > 0:
        raise ValueError(f"the spread floor must be positive, got {floor}")
    p, t, s = (np.asarray(v, dtype=np.float64) for v in (prediction, truth, sigma))
    return np.abs(t - p) / np.maximum(s, float(floor))


def conformal_interval(prediction: float, sigma: float, q: float, floor: float) -> tuple[float, float]:
    """``prediction -/+ q * max(sigma, floor)``: the interval that covers the truth with probability >= 1 - alpha
    (marginally, over cases exchangeable with the calibration set) when ``q`` is :func:`conformal_quantile` of
    :func:`normalised_scores`."""
    half = float(q) * max(float(sigma), float(floor))
    return float(prediction) - half, float(prediction) + half


def sample_spread(values: Sequence[float | None]) -> float | None:
    """Population standard deviation of the per-sample values (None entries are left out; None if < 2 remain)."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.std(kept)) if len(kept) >= 2 else None


def require_conformal(ckpt_path: str | Path, enabled: bool, tta_samples: int) -> dict[str, Any] | None:
    """The conformal settings (``conformal`` entry of ``model.json`` beside ``ckpt_path``) when ``enabled``, else None.

    Refuses rather than print an interval without its guarantee.

    Raises:
        common.checkpoint.CheckpointError: ``enabled`` and the settings file is missing, has no ``conformal``
            entry, was calibrated on too few patients (a quantile of None: infinite) or with another
            ``tta_samples`` (the spread that normalises the score depends on it); the message names the file.
    """
    if not enabled:
        return None
    from common.checkpoint import CheckpointError, settings_path

    path = settings_path(ckpt_path)
    settings: dict[str, Any] = {}
    if path.is_file():
        import json

        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: unreadable training settings ({e})") from e
    conformal = settings.get("conformal") if isinstance(settings, dict) else None
    if not isinstance(conformal, dict) or not isinstance(conformal.get("q"), dict):
        raise CheckpointError(f"{path}: no conformal calibration recorded ('conformal' entry): --uncertainty true "
                              "needs a model trained by this version (the intervals are calibrated at the end of "
                              "training); run with --uncertainty false or retrain")
    missing = sorted(k for k, v in conformal["q"].items() if v is None)
    if missing:
        raise CheckpointError(f"{path}: the conformal calibration used {conformal.get('n')} validation patients, too "
                              f"few for a {100 * (1 - conformal.get('alpha', 0.05)):.0f} % interval with a "
                              f"guarantee (at least {conformal.get('n_required')} needed; {', '.join(missing)} "
                              "unbounded): train with more patients or a larger val_fraction, or run with "
                              "--uncertainty false")
    if int(conformal.get("tta_samples", -1)) != int(tta_samples):
        raise CheckpointError(f"{path}: the conformal constants were calibrated with tta_samples "
                              f"{conformal.get('tta_samples')}, this run asks for {tta_samples}: the TTA spread "
                              "that scales the intervals would differ; pass --tta_samples "
                              f"{conformal.get('tta_samples')}")
    return conformal


def min_calibration_cases(alpha: float) -> int:
    """The fewest calibration cases with a finite conformal quantile: the least n with ceil((n+1)(1-alpha)) <= n."""
    n = 1
    while math.ceil((n + 1) * (1.0 - float(alpha))) > n:
        n += 1
    return n


def write_entropy_png(entropy: Any, path: str | Path, channels: int, activation: str) -> float:
    """Write ``(H, W)`` (or ``(1, H, W)``) entropy (nats) as an 8-bit PNG atomically: level =
    round(255 * H / max_entropy); the PNG text metadata says ``uncertainty_unit: nats`` and ``nats_per_level``
    (multiply a level by it to get nats). Returns ``nats_per_level``.

    Raises:
        ValueError: the map is not 2D.
    """
    from common.io import save_png

    top = max_entropy(channels, activation)
    h = _numpy(entropy).astype(np.float64)
    h = h[0] if h.ndim == 3 and h.shape[0] == 1 else h  # a channel axis of one
    if h.ndim != 2:
        raise ValueError(f"{path}: an uncertainty PNG needs a 2D (H, W) map, got shape {h.shape}")
    levels = np.clip(np.round(h / top * 255.0), 0, 255).astype(np.uint8)
    per_level = top / 255.0
    save_png(levels, path, text={"uncertainty_unit": "nats", "nats_per_level": repr(per_level),
                                 "uncertainty": f"predictive entropy of the TTA mean {activation} probability"})
    return per_level


def write_entropy_nifti(entropy: Any, reference: Any, path: str | Path) -> None:
    """Write ``(*spatial)`` entropy (nats) as float32 NIfTI atomically in the geometry (affine, header units) of the
    nibabel image ``reference``.

    Raises:
        ValueError: the entropy's shape differs from the reference's spatial shape.
    """
    from common.io import save_nifti

    h = np.squeeze(_numpy(entropy)).astype(np.float32)
    if h.shape != tuple(reference.shape[:h.ndim]) or h.ndim != len(reference.shape[:3]):
        raise ValueError(f"{path}: uncertainty shape {h.shape} differs from the input {reference.shape}")
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(None, None)
    save_nifti(h, reference.affine, path, header)


UNCERTAINTY_CSV = "uncertainty.csv"


def write_uncertainty_csv(output_dir: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path | None:
    """Write ``<output_dir>/uncertainty.csv`` (one row per case) atomically when there are rows; return its path."""
    from common.io import write_csv

    if not rows:
        return None
    path = Path(str(output_dir)) / UNCERTAINTY_CSV
    write_csv(path, [dict(r) for r in rows])
    return path


# --------------------------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------------------------
ItemArrays = Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any]]


class UncertaintyCaseRows:
    """``case_rows`` of ``common.handlers.EvaluationWriter`` that adds the uncertainty columns to a bundle's rows.

    When ``enabled``, every item of an evaluator iteration (``engine.state.batch`` / ``engine.state.output``) goes
    through ``item_arrays(batch_item, output_item)``, which returns same-shaped arrays: ``uncertainty`` (voxel
    entropy, nats), ``wrong`` (prediction differs from the truth), ``foreground`` (truth or prediction) and
    ``predicted`` (the predicted foreground), optionally ``valid`` (where metrics count), plus ``case`` (the case
    the item belongs to: a cardiac patient has two frames). A case's row (from the wrapped ``case_rows``) then gets
    ``uncertainty_error_auc`` (the mean over its items of :func:`uncertainty_error_auc`) and ``uncertainty_score``
    (:func:`case_score` over all its items' voxels with a ``band``-voxel band along ``band_axes``).
    ``case_columns(items, row)``, when given, adds further columns from the case's item dicts (each with
    ``sample_counts``, its ``(S, C)`` slice of ``inferer.sample_counts`` when an ``inferer`` is given).

    With ``overlay_dir``, the first ``max_maps`` cases get ``<case>_uncertainty.png`` (:func:`plot_uncertainty_map`;
    MLflow logs the overlay folder, and the main job's report shows it).

    :meth:`summary` is the ``extra`` of the writer: ``uncertainty_error_auc`` (mean over cases) and
    ``uncertainty_case_spearman`` (:func:`uncertainty_case_spearman` against ``key_metric``) plus
    ``dataset_metrics`` (e.g. cardiac's EF interval coverage), each with its bootstrap CI
    (:func:`common.evaluation.summarise`). Disabled, rows and ``metrics.json`` are exactly those of ``case_rows``.
    """

    def __init__(self, case_rows: Callable[[Any], Sequence[Mapping[str, Any]]], item_arrays: ItemArrays,
                 key_metric: str, enabled: bool = False, band: int = 2, band_axes: Sequence[int] | None = None,
                 inferer: Any = None, case_columns: Callable | None = None,
                 dataset_metrics: Mapping[str, Callable] | None = None, n_resamples: int = 1000,
                 seed: int = 0, overlay_dir: str | Path | None = None, max_maps: int = 1) -> None:
        self.case_rows, self.item_arrays, self.key_metric = case_rows, item_arrays, key_metric
        self.enabled, self.band = bool(enabled), int(band)
        self.band_axes = None if band_axes is None else [int(a) for a in band_axes]
        self.inferer, self.case_columns = inferer, case_columns
        self.dataset_metrics = dict(dataset_metrics or {})
        self.n_resamples, self.seed = int(n_resamples), int(seed)
        self.overlay_dir = None if overlay_dir is None else Path(str(overlay_dir))
        self.max_maps, self.maps_written = int(max_maps), 0
        self.pending: dict[str, list[dict[str, Any]]] = {}
        self.rows: list[dict[str, Any]] = []

    def __call__(self, engine: Any) -> list[dict[str, Any]]:
        if getattr(engine.state, "iteration", 1) == 1:
            self.pending, self.rows = {}, []
        if self.enabled:
            counts = getattr(self.inferer, "sample_counts", None)
            for i, (b, o) in enumerate(zip(engine.state.batch, engine.state.output)):
                arrays = dict(self.item_arrays(b, o))
                arrays["sample_counts"] = None if counts is None else counts[:, i].numpy()
                self.pending.setdefault(str(arrays["case"]), []).append(arrays)
        rows = [dict(r) for r in self.case_rows(engine)]
        if self.enabled:
            for row in rows:
                row.update(self._columns(self.pending.pop(str(row["case"]), []), row))
            self.rows.extend(rows)
        return rows

    def _columns(self, items: list[dict[str, Any]], row: Mapping[str, Any]) -> dict[str, Any]:
        if not items:
            return {"uncertainty_error_auc": None, "uncertainty_score": None}
        aucs = [uncertainty_error_auc(i["uncertainty"], i["wrong"], i["foreground"], i.get("valid")) for i in items]
        aucs = [a for a in aucs if a is not None]
        predicted = np.stack([_numpy(i["predicted"]).astype(bool) for i in items])
        axes = range(predicted.ndim - 1) if self.band_axes is None else self.band_axes
        score = case_score(np.stack([_numpy(i["uncertainty"]) for i in items]), predicted, self.band,
                           [a + 1 for a in axes])  # items stacked on axis 0: no band across them
        out: dict[str, Any] = {"uncertainty_error_auc": float(np.mean(aucs)) if aucs else None,
                               "uncertainty_score": score}
        if self.case_columns is not None:
            out.update(self.case_columns(items, row))
        if self.overlay_dir is not None and self.maps_written < self.max_maps:
            from common.distributed import is_rank0

            if is_rank0():
                plot_uncertainty_map(items[0], self.overlay_dir / f"{row['case']}_uncertainty.png", str(row["case"]),
                                     out["uncertainty_error_auc"], score)
                self.maps_written += 1
        return out

    def summary(self) -> dict[str, Any]:
        """The uncertainty entries of ``metrics.json`` (empty when disabled or without rows)."""
        if not self.enabled or not self.rows:
            return {}
        from common.evaluation import summarise

        key = self.key_metric
        metrics = {"uncertainty_case_spearman": lambda rows: uncertainty_case_spearman(rows, key),
                   **self.dataset_metrics}
        out = summarise(self.rows, "uncertainty_error_auc", ["uncertainty_error_auc"], metrics,
                        n_resamples=self.n_resamples, seed=self.seed)
        out.pop("key_metric", None)
        out.pop("num_cases", None)
        return out


def plot_uncertainty_map(item: Mapping[str, Any], path: str | Path, case: str, auc: float | None = None,
                         score: float | None = None) -> str:
    """Write a PNG (atomically) of one item of :class:`UncertaintyCaseRows`: the entropy map (nats, colour bar) with
    the predicted foreground's outline, beside the wrong voxels; for 3D items the slice (last axis) with the most
    predicted foreground. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.io import save_figure

    h, wrong, predicted = (_numpy(item[k]) for k in ("uncertainty", "wrong", "predicted"))
    if item.get("valid") is not None:  # only where metrics count (eye: the FOV)
        valid = _numpy(item["valid"]).astype(bool)
        h, wrong = np.where(valid, h, 0.0), wrong & valid
    title = ""
    if h.ndim == 3:  # NIfTI (x, y, z): the slice with the most foreground, transposed for display as other overlays
        z = int(np.argmax(predicted.reshape(-1, predicted.shape[-1]).sum(0))) if predicted.any() else h.shape[-1] // 2
        h, wrong, predicted, title = h[..., z].T, wrong[..., z].T, predicted[..., z].T, f", slice {z}"
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=100)
    shown = axes[0].imshow(h, cmap="magma", vmin=0)
    if predicted.any() and min(predicted.shape) >= 2:  # matplotlib contours need a 2 x 2 grid at least
        axes[0].contour(predicted.astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
    fig.colorbar(shown, ax=axes[0], fraction=0.046, label="predictive entropy (nats)")
    axes[0].set_title("uncertainty, predicted outline (cyan)", fontsize=8)
    axes[1].imshow(wrong.astype(float), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("wrong voxels (white)", fontsize=8)
    for ax in axes:
        ax.axis("off")
    text = [f"{case}{title}"]
    if auc is not None:
        text.append(f"error AUC {auc:.3f}")
    if score is not None:
        text.append(f"case score {score:.3f} nats")
    fig.suptitle("; ".join(text), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
