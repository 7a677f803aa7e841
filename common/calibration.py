"""Calibrated probabilities and operating points: temperature scaling, threshold rules, ECE, Brier, reliability plots.

* Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): one scalar ``T > 0``
  divides the logits, ``p = sigmoid(z / T)`` (one logit) or ``softmax(z / T)`` (one logit per class), with ``T``
  minimising the negative log-likelihood on the validation split (``scipy.optimize.minimize_scalar`` on ``log T``).
  It changes no ranking (AUC is unchanged), only how far the probabilities are from 0.5.
* Operating threshold (``threshold_rule``) chosen on the calibrated validation probabilities from scikit-learn's
  ``roc_curve``: ``youden`` (maximise sensitivity + specificity - 1), ``sensitivity:0.95`` (the highest threshold
  whose sensitivity is at least 0.95), ``specificity:0.9`` (the lowest threshold whose specificity is at least 0.9)
  or ``fixed`` (keep the configured threshold). A case is positive when ``p >= threshold``.
* Expected calibration error with equal-width bins (Naeini et al. 2015; Guo et al. 2017) and the Brier score.
* :class:`CalibrationFitter`: the ignite handler that, when training completes, loads the best model, fits ``T`` and
  the threshold on the validation loader and records ``temperature``, ``threshold`` and ``threshold_rule`` in
  ``models/model.json`` (rank 0 only). :class:`ReliabilityWriter`: evaluate's ``reliability.png``.

Shapes: "binary" probabilities/logits are ``(N,)`` or ``(N, 1)`` (positive class) or ``(N, 2)`` (softmax over
[negative, positive]); "multi-class" ones are ``(N, C)``. Labels are ``(N,)`` integers.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit, log_softmax, softmax

from common.checkpoint import BestModelFitter, record_settings
from common.distributed import is_rank0
from common.io import save_figure

logger = logging.getLogger(__name__)

N_BINS = 15
TEMPERATURE_BOUNDS = (0.05, 20.0)
THRESHOLD_RULES = ("youden", "sensitivity:<value>", "specificity:<value>", "fixed")


def _logits(logits: Any) -> np.ndarray:
    z = np.asarray(logits.detach().cpu().numpy() if hasattr(logits, "detach") else logits, dtype=np.float64)
    if z.ndim == 2 and z.shape[1] == 1:
        z = z[:, 0]
    if z.ndim not in (1, 2) or z.shape[0] == 0:
        raise ValueError(f"logits must be a non-empty (N,), (N, 1) or (N, C) array, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or Inf: the network diverged; calibration is impossible")
    return z


def _labels(labels: Any, n: int) -> np.ndarray:
    y = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels, dtype=np.float64)
    y = y.reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} predictions")
    if not np.all(y == np.round(y)) or (y < 0).any():
        raise ValueError(f"labels must be class indices (0, 1, ...), got values {sorted(set(y.tolist()))[:5]}")
    return y.astype(int)


def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats per case) of ``labels`` under the logits divided by ``temperature``."""
    z = _logits(logits) / float(temperature)
    y = _labels(labels, z.shape[0])
    if z.ndim == 1:
        return float(-np.mean(np.where(y == 1, log_expit(z), log_expit(-z))))
    return float(-np.mean(log_softmax(z, axis=1)[np.arange(len(y)), y]))


def fit_temperature(logits: Any, labels: Any, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature ``T`` in ``bounds`` minimising :func:`nll` (Guo et al. 2017), found by scipy's bounded
    Brent search (``minimize_scalar(method="bounded")``) on ``log T``.

    Args:
        logits: ``(N,)``/``(N, 1)`` (sigmoid) or ``(N, C)`` (softmax) network outputs before the activation.
        labels: ``(N,)`` class indices.
        bounds: the search interval for ``T``; a result at a bound is logged as a warning (e.g. a perfectly
            separated validation split drives ``T`` towards 0).

    Raises:
        ValueError: empty or non-finite logits, labels that are not class indices or of another length.
    """
    z = _logits(logits)
    y = _labels(labels, z.shape[0])
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    result = minimize_scalar(lambda log_t: nll(z, y, math.exp(log_t)), bounds=(lo, hi), method="bounded",
                             options={"xatol": 1e-5})
    temperature = float(math.exp(result.x))
    if min(result.x - lo, hi - result.x) < 1e-3:
        logger.warning("temperature %.4g is at the search bound %s (the validation split may be perfectly separated "
                       "or too small): the calibration is unreliable", temperature, bounds)
    return temperature


def positive_probability(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """``(N,)`` probability of the positive class: ``sigmoid(z / T)`` for one logit, ``softmax(z / T)[:, 1]`` for two.

    Raises:
        ValueError: more than two classes (no single positive class).
    """
    z = _logits(logits) / float(temperature)
    if z.ndim == 1:
        return expit(z)
    if z.shape[1] != 2:
        raise ValueError(f"a positive-class probability needs 1 or 2 logits per case, got {z.shape[1]}")
    return softmax(z, axis=1)[:, 1]


class TemperatureScaled:
    """Dict transform: divide the logits under ``keys`` by the fitted ``temperature`` (``z / T``; the
    postprocessing's activation then gives the calibrated probabilities of :func:`positive_probability`).

    Raises:
        ValueError: ``temperature`` is not a positive number (names ``model.json`` and ``--temperature``).
    """

    def __init__(self, keys: str | Sequence[str], temperature: float) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        try:
            self.temperature = float(temperature)
        except (TypeError, ValueError):
            self.temperature = float("nan")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r} (model.json or --temperature)")

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        for key in self.keys:
            d[key] = d[key] / self.temperature
        return d


def parse_rule(rule: str) -> tuple[str, float | None]:
    """``"youden"`` -> ``("youden", None)``; ``"sensitivity:0.95"`` -> ``("sensitivity", 0.95)``; ``"fixed"``.

    Raises:
        ValueError: an unknown rule or a target outside (0, 1]; the message lists the rules.
    """
    text = str(rule).strip().lower()
    if text in ("youden", "fixed"):
        return text, None
    name, _, value = text.partition(":")
    if name in ("sensitivity", "specificity"):
        try:
            target = float(value)
        except ValueError:
            target = float("nan")
        if 0.0 < target <= 1.0:
            return name, target
    raise ValueError(f"threshold_rule {rule!r} is not one of {', '.join(THRESHOLD_RULES)} (a <value> in (0, 1], "
                     "e.g. sensitivity:0.95)")


def choose_threshold(probs: Any, labels: Any, rule: str = "youden", fixed: float = 0.5) -> float:
    """The operating threshold by ``rule`` on ``(N,)`` positive-class probabilities (positive when ``p >= t``).

    Candidates are scikit-learn's ``roc_curve(labels, probs, drop_intermediate=False)`` thresholds (each distinct
    probability). ``youden``: the candidate maximising sensitivity + specificity - 1 (ties: the highest threshold);
    ``sensitivity:s``: the highest candidate whose sensitivity is >= s; ``specificity:s``: the lowest candidate
    whose specificity is >= s; ``fixed``: ``fixed``.

    Raises:
        ValueError: an unknown rule, or labels without both classes (no ROC curve).
    """
    from sklearn.metrics import roc_curve

    name, target = parse_rule(rule)
    if name == "fixed":
        return float(fixed)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = _labels(labels, p.shape[0])
    if len(np.unique(y)) < 2:
        raise ValueError(f"threshold_rule {rule!r} needs both classes in the validation split; it has only class "
                         f"{int(y[0]) if y.size else 'none'} ({y.size} cases)")
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]  # the first point (threshold +inf) predicts nothing
    if name == "youden":
        index = int(np.argmax(tpr - fpr))  # thresholds decrease: argmax's first hit is the highest
    elif name == "sensitivity":
        index = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    else:
        index = int(np.flatnonzero(1.0 - fpr >= target - 1e-12)[-1])
    return float(thresholds[index])


def _binned(probs: Any, labels: Any, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of the confidence: counts, mean confidence, observed frequency; and the bin edges."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    y = _labels(labels, p.shape[0])
    if p.ndim == 2:  # multi-class: top-label confidence against top-label correctness
        conf, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    else:  # binary: the positive-class probability against the positive-class frequency
        conf, hit = p, (y == 1).astype(float)
    if ((conf < 0) | (conf > 1) | ~np.isfinite(conf)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    index = np.clip(np.digitize(conf, edges[1:-1], right=False), 0, n_bins - 1)  # bin b: [b/n, (b+1)/n), last ]
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, conf, n_bins) / counts
        freq = np.bincount(index, hit, n_bins) / counts
    return counts, mean_conf, freq, edges


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = N_BINS) -> float | None:
    """ECE = sum over ``n_bins`` equal-width bins of (cases in bin / N) * |observed frequency - mean confidence|.

    Binary ``(N,)`` probabilities are binned by the positive-class probability against the positive-class
    frequency (the probability a reader of ``predictions.csv`` sees); ``(N, C)`` ones by the top-label confidence
    against top-label accuracy (Guo et al. 2017). In [0, 1]; None for no case.
    """
    counts, mean_conf, freq, _ = _binned(probs, labels, n_bins)
    if counts.sum() == 0:
        return None
    used = counts > 0
    return float(np.sum(counts[used] * np.abs(freq[used] - mean_conf[used])) / counts.sum())


def brier_score(probs: Any, labels: Any) -> float | None:
    """Mean squared error of the probabilities: binary ``(N,)`` mean (p - y)^2 (scikit-learn's
    ``brier_score_loss`` with ``pos_label=1``, written out: the bootstrap of ``metrics.json`` calls it on every
    resample and scikit-learn's argument validation cost 10x the arithmetic); ``(N, C)`` mean over cases of sum over
    classes (p_c - [y = c])^2. None for no case, or binary probabilities with a label other than 0/1.

    Raises:
        ValueError: a binary probability outside [0, 1] (as ``brier_score_loss``), or labels that are not class
            indices.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.shape[0] == 0:
        return None
    y = _labels(labels, p.shape[0])
    if p.ndim == 1:
        if p.max() > 1 or p.min() < 0:
            raise ValueError(f"probabilities must lie in [0, 1], got values from {p.min()} to {p.max()}")
        return float(np.mean((p - y) ** 2)) if y.max() <= 1 else None
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def row_ece(rows: Sequence[Mapping[str, Any]], prob: str, label: str = "label", n_bins: int = N_BINS) -> float | None:
    """:func:`expected_calibration_error` of the ``prob`` column of per-case rows (a ``dataset_metrics`` entry of
    ``common.handlers.EvaluationWriter``: ``{"_target_": "common.calibration.row_ece", "_mode_": "callable",
    "prob": "p_malignant"}``)."""
    if not rows:
        return None
    return expected_calibration_error([float(r[prob]) for r in rows], [int(r[label]) for r in rows], n_bins)


def row_brier(rows: Sequence[Mapping[str, Any]], prob: str, label: str = "label") -> float | None:
    """:func:`brier_score` of the ``prob`` column of per-case rows (see :func:`row_ece`)."""
    if not rows:
        return None
    return brier_score([float(r[prob]) for r in rows], [int(r[label]) for r in rows])


def settings_summary(**values: Any) -> Callable[[], dict[str, Any]]:
    """An ``extra`` callable for ``EvaluationWriter`` giving the keyword values as they are (e.g. the recorded
    ``threshold``/``temperature``/``threshold_rule`` that produced the labels of metrics.json)."""
    return lambda: {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                    for k, v in values.items()}


def plot_reliability(path: str | Path, curves: Mapping[str, tuple[Any, Any]], n_bins: int = N_BINS,
                     title: str = "Reliability (validation-fitted temperature)") -> str:
    """Write a reliability diagram PNG atomically: per curve (name -> (probs, labels)) the observed frequency
    against the mean predicted probability of each non-empty equal-width bin, the diagonal of perfect calibration,
    the ECE in the legend, and below it the number of cases per bin (a bar per curve). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(str(path))
    fig, (ax, bars) = plt.subplots(2, 1, figsize=(5, 6.2), dpi=100, sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1.2]})
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    width = 1.0 / n_bins / max(len(curves), 1)
    for k, (name, (probs, labels)) in enumerate(curves.items()):
        counts, mean_conf, freq, edges = _binned(probs, labels, n_bins)
        used = counts > 0
        ece = expected_calibration_error(probs, labels, n_bins)
        ax.plot(mean_conf[used], freq[used], "o-", lw=1.5, label=f"{name} (ECE = {ece:.3f})")
        bars.bar(edges[:-1] + k * width, counts, width=width, align="edge", label=name)
    ax.set(ylabel="observed frequency of the positive class", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="upper left", fontsize=8)
    bars.set(xlabel=f"predicted probability ({n_bins} equal-width bins)", ylabel="cases per bin")
    bars.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


class ReliabilityWriter:
    """Ignite handler for evaluate: at the end of the epoch, plot ``<output_dir>/metrics_per_case.csv`` (written by
    ``common.handlers.EvaluationWriter`` at the same event; attach this after it) as ``<output_dir>/reliability.png``
    with the uncalibrated (``uncalibrated`` column) and calibrated (``calibrated`` column) probabilities. Rank 0."""

    def __init__(self, output_dir: str | Path, calibrated: str, uncalibrated: str, label: str = "label",
                 n_bins: int = N_BINS) -> None:
        self.output_dir = Path(str(output_dir))
        self.calibrated, self.uncalibrated, self.label, self.n_bins = calibrated, uncalibrated, label, int(n_bins)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> str | None:
        if not is_rank0():
            return None
        with open(self.output_dir / "metrics_per_case.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return None
        labels = [int(r[self.label]) for r in rows]
        curves = {"uncalibrated": ([float(r[self.uncalibrated]) for r in rows], labels),
                  "calibrated": ([float(r[self.calibrated]) for r in rows], labels)}
        return plot_reliability(self.output_dir / "reliability.png", curves, self.n_bins,
                                title=f"Reliability, {len(rows)} test cases")


def _batch_logits(network: torch.nn.Module, loader: Any, device: Any, image_key: str, label_key: str,
                  inferer: Callable | None) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = [], []
    with torch.no_grad():
        for batch in loader:
            x = torch.as_tensor(batch[image_key]).to(device)
            out = inferer(x, network) if inferer is not None else network(x)
            logits.append(torch.as_tensor(out).detach().float().cpu().reshape(x.shape[0], -1).numpy())
            labels.append(np.asarray(torch.as_tensor(batch[label_key]).detach().cpu().reshape(x.shape[0], -1)
                                     .numpy())[:, 0])
    return np.concatenate(logits), np.concatenate(labels)


class CalibrationFitter(BestModelFitter):
    """When training completes: fit the temperature and choose the threshold on the validation split with the best
    model, and record ``temperature``, ``threshold`` and ``threshold_rule`` in ``<ckpt_path stem>.json``.

    Attach to the trainer (``train#handlers``). At ``COMPLETED``, rank 0 loads ``ckpt_path`` (the best state dict
    that ``common.checkpoint.BestModelSaver`` wrote) into a copy of the network, runs it once over the validation
    data set (all of it, in order, whatever the distributed sampler), fits :func:`fit_temperature` on the logits and
    :func:`choose_threshold` on the calibrated positive-class probabilities, and rewrites ``model.json`` atomically
    with the three ids added. Other ranks do nothing. With more than two classes only the temperature is fitted.
    A validation split with one class keeps ``threshold`` (the configured one) and records the rule as
    ``fixed``, with a warning.

    Args:
        ckpt_path: the best model (``models/model.pt``); its settings file is ``models/model.json``.
        network: the trained network (possibly DDP-wrapped); it is not modified.
        dataloader: the validation loader (its dataset, batch size and collate function are used).
        threshold_rule: see :func:`choose_threshold`; checked when the handler is built.
        threshold: the threshold for ``fixed`` (and the fallback above).
        device, inferer: where and how to run the network (default: ``network(x)``).
        image_key, label_key: batch keys.

    Raises:
        ValueError: an unknown ``threshold_rule`` (at construction, before training spends any compute).
        common.checkpoint.CheckpointError: the best model is missing or does not fit the network.
    """

    def __init__(self, ckpt_path: str | Path, network: torch.nn.Module, dataloader: Any,
                 threshold_rule: str = "youden", threshold: float = 0.5, device: Any = "cpu",
                 inferer: Callable | None = None, image_key: str = "image", label_key: str = "label") -> None:
        parse_rule(threshold_rule)
        super().__init__(ckpt_path, network, device)
        self.dataloader = dataloader
        self.threshold_rule, self.threshold = str(threshold_rule), float(threshold)
        self.inferer, self.image_key, self.label_key = inferer, image_key, label_key

    def fit(self, network: torch.nn.Module) -> dict[str, Any]:
        from torch.utils.data import DataLoader

        source = self.dataloader
        loader = DataLoader(source.dataset, batch_size=source.batch_size or 1, shuffle=False, num_workers=0,
                            collate_fn=source.collate_fn)
        logits, labels = _batch_logits(network, loader, self.device, self.image_key, self.label_key, self.inferer)
        labels = np.round(labels)
        temperature = fit_temperature(logits, labels)
        result: dict[str, Any] = {"temperature": temperature}
        binary = logits.ndim == 1 or logits.shape[1] <= 2
        if binary:
            probs = positive_probability(logits, temperature)
            rule = self.threshold_rule
            try:
                threshold = choose_threshold(probs, labels, rule, self.threshold)
            except ValueError as e:
                logger.warning("%s: keeping threshold %s", e, self.threshold)
                threshold, rule = self.threshold, "fixed"
            result.update(threshold=threshold, threshold_rule=rule)
            ece_before = expected_calibration_error(positive_probability(logits, 1.0), labels)
            ece_after = expected_calibration_error(probs, labels)
        else:
            ece_before = expected_calibration_error(softmax(logits, axis=1), labels)
            ece_after = expected_calibration_error(softmax(logits / temperature, axis=1), labels)
        path = record_settings(self.ckpt_path, result)
        logger.info("calibration on %d validation cases: temperature %.4f (NLL %.4f -> %.4f, ECE %.4f -> %.4f)%s; "
                    "recorded in %s", len(labels), temperature, nll(logits, labels), nll(logits, labels, temperature),
                    ece_before, ece_after,
                    f", threshold {result['threshold']:.4f} by {result['threshold_rule']}" if binary else "", path)
        return result
