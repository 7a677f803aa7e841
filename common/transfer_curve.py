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
  (``common.io.save_figure``);
* the script around them: :func:`parser` (the command line every script shares), :func:`start` (a :class:`Run`:
  work folder, N values, widths, clock), :func:`make_sets` (source, source test, target pool, target test),
  :func:`source_reference`, :func:`neural_arms` (``scratch``, ``finetune_all``, ``frozen_encoder``),
  :func:`features_logreg_arm`, :func:`finish` (the loop, the JSON written after every N, the plot) and
  :func:`classifier_curve` (all of it for a classifier scored by ROC AUC).

The metric is any function ``metric(y, scores) -> float`` of the test targets and one seed's outputs, both indexed by
test case along their first axis (ROC AUC of labels and scores; for segmentation, the mean of per-case Dice values
passed as ``scores``, see :func:`mean_of_scores`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.io import save_figure, write_json
from common.transfer import param_groups, prepare

Metric = Callable[[np.ndarray, np.ndarray], float]

#: the site options of the phantoms with simulated scanners (breast, cardiac), for :func:`parser`
SCANNER_SITES = (("--source_scanner", {"default": "A"}), ("--target_scanner", {"default": "B"}))


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


def parser(description: str, bundle_dir: str | Path, *, source_cases: int, test_cases: int, sizes: str, steps: int,
           lr: float, image_size: int, channels: str, sites: Sequence[tuple[str, Mapping[str, Any]]] = (),
           seeds: int = 3, source_steps: int = 300, n_resamples: int = 500) -> argparse.ArgumentParser:
    """The command line of every ``scripts/benchmark_transfer.py``, with the bundle's defaults.

    Options, in this order (the order of ``settings`` in the JSON): ``--work_dir`` (required), ``--source_cases``,
    ``--test_cases``, ``--sizes`` (comma-separated N), ``--seeds``, ``--steps``, ``--source_steps``, ``--lr``,
    ``--image_size`` (pixels), ``--channels`` (comma-separated widths), the bundle's ``sites`` options (``(flag,
    add_argument keywords)``, e.g. ``("--target_scanner", {"default": "B"})``), ``--n_resamples`` and ``--plot``
    (default ``<bundle_dir>/docs/transfer_curve.png``).
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--work_dir", required=True)
    p.add_argument("--source_cases", type=int, default=source_cases)
    p.add_argument("--test_cases", type=int, default=test_cases)
    p.add_argument("--sizes", default=sizes)
    p.add_argument("--seeds", type=int, default=seeds)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--source_steps", type=int, default=source_steps)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--image_size", type=int, default=image_size)
    p.add_argument("--channels", default=channels)
    for flag, kwargs in sites:
        p.add_argument(flag, **kwargs)
    p.add_argument("--n_resamples", type=int, default=n_resamples)
    p.add_argument("--plot", default=str(Path(bundle_dir) / "docs" / "transfer_curve.png"))
    return p


@dataclass
class Run:
    """One learning-curve run (:func:`start`): its arguments, work folder, N values, network widths and clock."""

    args: argparse.Namespace
    work: Path
    sizes: list[int]
    channels: list[int]
    started: float
    generated: float | None = None  # seconds spent making the data (:func:`make_sets`)

    def seconds(self) -> float:
        """Wall seconds since :func:`start`."""
        return time.perf_counter() - self.started

    def save_source(self, net: torch.nn.Module) -> Path:
        """Write the source network's ``state_dict`` to ``<work_dir>/source_model.pt``; return the path."""
        path = self.work / "source_model.pt"
        torch.save(net.state_dict(), path)
        return path


def start(args: argparse.Namespace) -> Run:
    """One torch thread (the curve's timings and results do not depend on the machine's cores), the clock started,
    ``--work_dir`` created, ``--sizes`` and ``--channels`` parsed into integers."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    return Run(args, work, [int(s) for s in args.sizes.split(",")], [int(c) for c in args.channels.split(",")],
               started)


def make_sets(run: Run, make: Callable[[int, int, Any, int], Any], source_site: Any, target_site: Any
              ) -> tuple[Any, Any, Any, Any]:
    """The four data sets of a curve, ``make(n, seed, site, image_size)`` each: the source training set
    (``--source_cases``, seed 1) and source test set (``--test_cases``, seed 2) at ``source_site``, the target pool
    (the largest N, seed 3) and the held-out target test set (``--test_cases``, seed 4) at ``target_site``. The time
    spent is kept as ``run.generated``.

    Returns:
        ``(source, source_test, pool, target_test)``, each what ``make`` returns.
    """
    args = run.args
    sets = (make(args.source_cases, 1, source_site, args.image_size),
            make(args.test_cases, 2, source_site, args.image_size),
            make(max(run.sizes), 3, target_site, args.image_size),
            make(args.test_cases, 4, target_site, args.image_size))
    run.generated = run.seconds()
    return sets


def source_reference(key: str, on_source_test: float, on_target_test: float) -> dict[str, float]:
    """``{"source_<key>_on_source_test", "source_<key>_on_target_test"}``: the source network without tuning (the
    plot's reference line is the second); printed as one JSON line."""
    reference = {f"source_{key}_on_source_test": float(on_source_test),
                 f"source_{key}_on_target_test": float(on_target_test)}
    print(json.dumps(reference), flush=True)
    return reference


def neural_arms(network: Callable[[int], torch.nn.Module], source_ckpt: str | Path, presets: Mapping[str, Any],
                fit: Callable[[torch.nn.Module, int, int], torch.nn.Module],
                evaluate: Callable[[torch.nn.Module], np.ndarray]) -> dict[str, Callable[[int, int], np.ndarray]]:
    """The arms that train a network, for :func:`run_curve`: each ``arm(n, seed)`` builds ``network(100 + seed)``,
    trains it with ``fit(net, n, seed)`` on the first ``n`` target cases and returns ``evaluate(net)`` on the test set.

    * ``scratch``: the network as built (random initialisation);
    * ``finetune_all``: ``source_ckpt`` loaded, every parameter trained (:func:`common.transfer.prepare`);
    * ``frozen_encoder``: ``source_ckpt`` loaded, the ``encoder`` preset of ``presets`` frozen.
    """

    def arm(*transfer: Any) -> Callable[[int, int], np.ndarray]:
        def run(n: int, seed: int) -> np.ndarray:
            net = network(100 + seed)
            if transfer:
                net = prepare(net, *transfer)
            return evaluate(fit(net, n, seed))

        return run

    return {"scratch": arm(), "finetune_all": arm(source_ckpt),
            "frozen_encoder": arm(source_ckpt, ["encoder"], presets)}


@torch.no_grad()
def pooled_features(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """``net.features(x)`` ``(n, C, H, W)`` averaged over space: ``(n, C)``, the network in eval mode."""
    net.eval()
    return net.features(x).mean(dim=(2, 3)).numpy()


def features_logreg_arm(features: Callable[[torch.Tensor], np.ndarray], x_pool: torch.Tensor, y_pool: Any,
                        x_test: torch.Tensor) -> Callable[[int, int], np.ndarray]:
    """The ``features_logreg`` arm: scikit-learn logistic regression (``C=1``, balanced class weights, standardised
    inputs) on ``features`` of the first ``n`` pool cases (e.g. the frozen source network's
    :func:`pooled_features`); ``arm(n, seed)`` returns P(class 1) of the test cases. When the first ``n`` cases hold
    one class only, no classifier can be fitted and every test case gets that class as a constant score.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def arm(n: int, seed: int) -> np.ndarray:
        x_n, y_n = x_pool[:n], np.asarray(y_pool[:n]).astype(int)
        if len(np.unique(y_n)) < 2:
            return np.full(len(x_test), float(y_n[0]))
        scaler = StandardScaler().fit(features(x_n))
        clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced", random_state=seed)
        clf.fit(scaler.transform(features(x_n)), y_n)
        return clf.predict_proba(scaler.transform(features(x_test)))[:, 1]

    return arm


def finish(run: Run, reference: Mapping[str, float], arms: Mapping[str, Callable[[int, int], np.ndarray]],
           y_test: np.ndarray, metric: Metric, key: str, labels: tuple[str, str, str], **extra: Any) -> dict:
    """The curve (:func:`run_curve`), ``<work_dir>/transfer_curve.json`` rewritten after every N (:func:`curve_record`
    with ``extra``; a stopped run keeps what it measured) and the plot at ``--plot`` (:func:`plot_curve`, ``labels`` =
    x label, y label, title; the reference line is ``source_<key>_on_target_test``).

    Returns:
        the JSON record (``seconds``: ``generate``, the data, :func:`make_sets`; ``total``).
    """
    args, out = run.args, {}

    def record(results: dict) -> None:
        out.update(curve_record(vars(args), reference, results, {"generate": run.generated, "total": run.seconds()},
                                **extra))
        write_json(run.work / "transfer_curve.json", out)

    results = run_curve(run.sizes, args.seeds, arms, y_test, metric, args.n_resamples, key=key,
                        log=lambda line: print(line, flush=True), after_size=record)
    plot_curve(results, args.plot, key, *labels, reference=reference[f"source_{key}_on_target_test"])
    print(f"total {out['seconds']['total']:.0f} s", flush=True)
    return out


def classifier_curve(run: Run, network: Callable[[int], torch.nn.Module], train: Callable[..., torch.nn.Module],
                     scores: Callable[[torch.nn.Module, torch.Tensor], np.ndarray], sets: tuple[Any, Any, Any, Any],
                     presets: Mapping[str, Any], labels: tuple[str, str, str], **extra: Any) -> dict:
    """The ROC AUC curve of a classifier bundle (breast, pathology): the source network trained
    (``train(net, x, y, steps, lr, seed)``, ``--source_steps``, seed 0) and saved, its AUC on both test sets
    (:func:`source_reference`), the three :func:`neural_arms` (``--steps``) and :func:`features_logreg_arm` on its
    :func:`pooled_features`, then :func:`finish`.

    Args:
        network: ``network(seed)``, a freshly initialised network (with a ``features`` module).
        scores: ``scores(net, x)``, P(positive) ``(n,)`` per case.
        sets: :func:`make_sets` of ``(x, y)`` pairs: images ``(n, C, H, W)`` and labels ``(n,)`` (1 = positive).
        presets: the bundle's ``FREEZE_PRESETS`` (its ``encoder`` preset is frozen).
        labels, extra: see :func:`finish`.
    """
    args = run.args
    (xs, ys), (xs_test, ys_test), (pool_x, pool_y), (xt, yt) = sets
    source = train(network(0), xs, ys, args.source_steps, args.lr, seed=0)
    source_ckpt = run.save_source(source)
    y_test = np.asarray(yt)
    reference = source_reference("auc", auc_metric(np.asarray(ys_test), scores(source, xs_test)),
                                 auc_metric(y_test, scores(source, xt)))
    arms = neural_arms(network, source_ckpt, presets,
                       lambda net, n, seed: train(net, pool_x[:n], pool_y[:n], args.steps, args.lr, seed),
                       lambda net: scores(net, xt))
    arms["features_logreg"] = features_logreg_arm(lambda x: pooled_features(source, x), pool_x, pool_y, xt)
    return finish(run, reference, arms, y_test, auc_metric, "auc", labels, **extra)
