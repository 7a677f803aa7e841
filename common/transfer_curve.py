"""Learning curves of transfer on a simulated site shift (issue 16): what every bundle's
``scripts/benchmark_transfer.py`` shares.

A curve compares *arms* (e.g. ``scratch``, ``finetune_all``, ``frozen_encoder``, ``features_logreg``) trained on the
first N labelled cases of a target site, for several N and seeds, on one held-out target-site test set:

* :func:`train_steps`: the same number of optimiser steps for every arm and N (batches drawn with replacement, random
  flips), so a small N is not also fewer updates;
* :func:`bootstrap_ci`: the seed-averaged metric and its 95 % bootstrap CI (test cases resampled jointly for every
  seed, the seed-averaged metric recomputed on each resample; percentile interval);
* :func:`run_curve`: the loop over N, seeds and arms, giving ``{arm: {N: {metric, "ci95", metric_per_seed}}}``;
* :func:`curve_record` / :func:`plot_curve`: the JSON layout of ``docs/transfer_curve.json`` and its PNG
  (``common.io.save_figure``).

The metric is any function ``metric(y, scores) -> float`` of the test targets and one seed's outputs, both indexed by
test case along their first axis (ROC AUC of labels and scores; for segmentation, the mean of per-case Dice values
passed as ``scores``, see :func:`mean_of_scores`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.io import save_figure
from common.transfer import param_groups

Metric = Callable[[np.ndarray, np.ndarray], float]


def mean_of_scores(y: np.ndarray, scores: np.ndarray) -> float:
    """The mean of ``scores`` (e.g. per-case Dice values), ignoring ``y``: the metric for segmentation curves."""
    return float(np.mean(scores))


def train_steps(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, steps: int, lr: float,
                seed: int, batch: int = 32, pretrained_lr_scale: float = 1.0, flip_target: bool = False,
                weight_decay: float = 1e-4) -> torch.nn.Module:
    """Train ``net`` for exactly ``steps`` AdamW steps on batches of ``min(batch, len(x))`` cases drawn with
    replacement from ``(x, y)``; each batch is flipped along the last axis, then the one before, each with
    probability 0.5 (and ``y`` with it when ``flip_target``, i.e. for segmentation masks).

    Args:
        net: the network (its frozen parameters, ``requires_grad=False``, are left out of the optimiser;
            loaded parameters get ``lr * pretrained_lr_scale``, ``common.transfer.param_groups``).
        x: inputs ``(n, C, H, W)``; y: targets ``(n, ...)`` as ``loss_fn(net(x), y)`` expects.
        loss_fn: the loss.
        steps, lr, batch: optimiser steps, learning rate, batch size.
        seed: seed of the batch draws and flips (a ``torch.Generator`` of its own; dropout uses the global RNG).

    Returns:
        ``net``, trained in place.
    """
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(param_groups(net, lr, pretrained_lr_scale), lr=lr, weight_decay=weight_decay)
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=g)
        xb, yb = x[idx], y[idx]
        for dim in (-1, -2):
            if torch.rand(1, generator=g) < 0.5:
                xb = xb.flip(dim)
                if flip_target:
                    yb = yb.flip(dim)
        optimizer.zero_grad()
        loss_fn(net(xb), yb).backward()
        optimizer.step()
    return net


def bootstrap_ci(y: np.ndarray, per_seed: Sequence[np.ndarray], metric: Metric, n_resamples: int, seed: int = 0,
                 ) -> tuple[float, float, float]:
    """The metric averaged over seeds and its 95 % percentile bootstrap CI.

    Args:
        y: test targets, test cases along the first axis.
        per_seed: one array of outputs per seed, test cases along the first axis.
        metric: ``metric(y, scores) -> float``; a resample on which it raises ``ValueError`` (e.g. ROC AUC of a
            resample holding one class only) is skipped.
        n_resamples: bootstrap resamples (test indices drawn with replacement, the same indices for every seed).
        seed: seed of the resampling.

    Returns:
        ``(mean over seeds of the metric, 2.5th percentile, 97.5th percentile)`` of the resampled seed means.

    Raises:
        ValueError: no resample could be scored.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    point = float(np.mean([metric(y, np.asarray(s)) for s in per_seed]))
    values = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(y), len(y))
        try:
            values.append(np.mean([metric(y[idx], np.asarray(s)[idx]) for s in per_seed]))
        except ValueError:
            continue
    if not values:
        raise ValueError(f"bootstrap_ci: none of {n_resamples} resamples of {len(y)} test cases could be scored")
    return point, float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def auc_metric(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (scikit-learn); ``ValueError`` when ``y`` holds one class only (such resamples are skipped)."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        raise ValueError("one class only")
    return float(roc_auc_score(y, scores))


def run_curve(sizes: Sequence[int], seeds: int, arms: Mapping[str, Callable[[int, int], np.ndarray]],
              y_test: np.ndarray, metric: Metric, n_resamples: int, key: str = "auc",
              after_size: Callable[[dict], None] | None = None, log: Callable[[str], None] | None = print) -> dict:
    """The learning-curve loop: for each N in ``sizes``, each seed ``0 .. seeds-1``, each arm in order,
    ``arms[arm](n, seed)`` trains on the first N target cases and returns its outputs on the test set.

    Returns:
        ``{arm: {n: {key: seed-mean metric, "ci95": [low, high], key + "_per_seed": [...]}}}``
        (:func:`bootstrap_ci`); ``after_size(results)`` is called after every N (e.g. to write the JSON so that a
        stopped run keeps what it measured).
    """
    results: dict[str, dict] = {arm: {} for arm in arms}
    for n in sizes:
        per_arm: dict[str, list] = {arm: [] for arm in arms}
        for seed in range(seeds):
            for arm, fit in arms.items():
                per_arm[arm].append(np.asarray(fit(n, seed)))
        for arm in arms:
            value, low, high = bootstrap_ci(y_test, per_arm[arm], metric, n_resamples)
            results[arm][n] = {key: value, "ci95": [low, high],
                               f"{key}_per_seed": [float(metric(y_test, s)) for s in per_arm[arm]]}
        if log is not None:
            log(f"N={n}: " + ", ".join(f"{a} {results[a][n][key]:.3f}" for a in arms))
        if after_size is not None:
            after_size(results)
    return results


def curve_record(settings: Mapping[str, Any], reference: Mapping[str, float], results: dict, seconds: dict,
                 **extra: Any) -> dict:
    """The JSON layout of ``docs/transfer_curve.json``: ``settings`` (the script's arguments), ``reference`` (the
    source network without tuning), ``results`` (:func:`run_curve`), ``seconds`` and any ``extra`` keys."""
    return {"settings": dict(settings), "reference": dict(reference), "results": results, "seconds": dict(seconds),
            **extra}


def plot_curve(results: dict, path: str | Path, key: str, xlabel: str, ylabel: str, title: str,
               reference: float | None = None, reference_label: str = "source model, no tuning") -> str:
    """One line per arm (mean over seeds against N, log x axis ticked at the N measured) with its 95 % CI band, an
    optional horizontal reference line, written as PNG through ``common.io.save_figure``.

    Returns:
        ``path`` as a string.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, by_n in results.items():
        ns = sorted(int(n) for n in by_n)
        rows = [by_n[n] if n in by_n else by_n[str(n)] for n in ns]
        ax.plot(ns, [r[key] for r in rows], marker="o", label=arm)
        ax.fill_between(ns, [r["ci95"][0] for r in rows], [r["ci95"][1] for r in rows], alpha=0.15)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", label=reference_label)
    ax.set_xscale("log")
    ns = sorted({int(n) for by_n in results.values() for n in by_n})
    ax.set_xticks(ns)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path, dpi=110)
