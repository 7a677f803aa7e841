"""Learning curve of transfer on a simulated scanner shift (issue 16): when does starting from a source site pay?

Run from the repository root::

    python bundles/breast/scripts/benchmark_transfer.py --work_dir /tmp/breast_transfer

Source site: ``--source_cases`` masses from simulated scanner ``--source_scanner`` (phantom ``SCANNERS``). Target
site: scanner ``--target_scanner``; a pool from which the first N masses (``--sizes``) are the labelled training set,
and ``--test_cases`` other held-out masses. One network (this bundle's ``HadushCNN``) is trained on the source site,
then for each N and seed four arms run on the target site:

* ``scratch``: random initialisation, all parameters trained;
* ``finetune_all``: the source network, all parameters trained (``common.transfer.prepare``);
* ``frozen_encoder``: the source network with the ``encoder`` preset frozen (only the head trains);
* ``features_logreg``: scikit-learn logistic regression on the frozen source network's globally pooled features.

Every neural arm trains for the same number of optimiser steps (``--steps``, batches drawn with replacement), so
small N is not also fewer updates. The key metric is ROC AUC (malignant vs benign) on the held-out target set; per
(arm, N) the mean over seeds and a 95 % bootstrap CI (test cases resampled, the seed-averaged AUC recomputed). The
output is ``<work_dir>/transfer_curve.json`` and a PNG (``--plot``).

Simplifications (stated in the results): images are rendered in memory (no DICOM round trip), cropped around the ROI
as the bundle's ``cropped`` source, windowed to the 0.5-99.5 percentiles and resized to ``--image_size`` (the
bundle's denoising and augmentation other than flips are left out); a narrow network (``--channels``) so that the
whole curve runs in minutes on a CPU. Numbers from it describe this phantom, not real mammograms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

BUNDLE = Path(__file__).resolve().parent.parent
REPO = BUNDLE.parent.parent
for path in (str(REPO), str(BUNDLE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from common.io import write_json  # noqa: E402
from common.transfer import param_groups, prepare  # noqa: E402
from scripts.networks import FREEZE_PRESETS, HadushCNN  # noqa: E402
from scripts.phantom import render_case  # noqa: E402
from scripts.transforms import crop_box  # noqa: E402

ARMS = ("scratch", "finetune_all", "frozen_encoder", "features_logreg")


def make_set(n: int, seed: int, scanner: str, image_size: int, shape=(160, 128), margin: float = 0.25):
    """``n`` masses of one simulated scanner: images ``(n, 1, S, S)`` float32 in [0, 1] and labels ``(n,)`` (1 =
    malignant); mass ``i`` uses generator seed ``seed * 100003 + i``."""
    from monai.transforms import Resize, ResizeWithPadOrCrop

    resize = Resize(spatial_size=image_size, size_mode="longest", mode="area")
    pad = ResizeWithPadOrCrop(spatial_size=(image_size, image_size), mode="edge")
    images, labels = [], []
    for i in range(n):
        rng = np.random.default_rng(seed * 100003 + i)
        malignant = bool(rng.random() < 0.45)
        case = render_case(rng, malignant, "CC" if i % 2 else "MLO", shape, scanner)
        y0, y1, x0, x1 = crop_box(case["roi"], margin)
        crop = case["image"][y0:y1, x0:x1].astype(np.float32)
        lo, hi = np.percentile(crop, [0.5, 99.5])
        crop = np.clip((crop - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        images.append(np.asarray(pad(resize(crop[None]))))
        labels.append(int(malignant))
    return torch.as_tensor(np.stack(images), dtype=torch.float32), torch.as_tensor(labels)


def train(net, x, y, steps: int, lr: float, seed: int, batch: int = 32, pretrained_lr_scale: float = 1.0):
    """``steps`` AdamW steps on batches drawn with replacement (random flips); class-balanced cross-entropy."""
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(param_groups(net, lr, pretrained_lr_scale), lr=lr, weight_decay=1e-4)
    counts = torch.bincount(y, minlength=2).float().clamp(min=1)
    loss_fn = torch.nn.CrossEntropyLoss(weight=counts.sum() / (2 * counts))
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=g)
        xb = x[idx]
        if torch.rand(1, generator=g) < 0.5:
            xb = xb.flip(-1)
        if torch.rand(1, generator=g) < 0.5:
            xb = xb.flip(-2)
        optimizer.zero_grad()
        loss_fn(net(xb), y[idx]).backward()
        optimizer.step()
    return net


@torch.no_grad()
def scores(net, x) -> np.ndarray:
    net.eval()
    return torch.softmax(net(x), dim=1)[:, 1].numpy()


@torch.no_grad()
def pooled_features(net, x) -> np.ndarray:
    net.eval()
    return net.features(x).mean(dim=(2, 3)).numpy()


def bootstrap_ci(y: np.ndarray, per_seed: list[np.ndarray], n_resamples: int, seed: int = 0):
    """Mean AUC over seeds and its 95 % bootstrap CI (test cases resampled jointly for every seed)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    point = float(np.mean([roc_auc_score(y, s) for s in per_seed]))
    values = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) < 2:
            continue
        values.append(np.mean([roc_auc_score(y[idx], s[idx]) for s in per_seed]))
    return point, float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--source_cases", type=int, default=400)
    parser.add_argument("--test_cases", type=int, default=200)
    parser.add_argument("--sizes", default="10,25,50,100,200")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--source_steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--channels", default="4,8,16,16,32")
    parser.add_argument("--source_scanner", default="A")
    parser.add_argument("--target_scanner", default="B")
    parser.add_argument("--n_resamples", type=int, default=500)
    parser.add_argument("--plot", default=str(BUNDLE / "docs" / "transfer_curve.png"))
    args = parser.parse_args(argv)
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    torch.set_num_threads(1)
    start = time.perf_counter()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    channels = [int(c) for c in args.channels.split(",")]

    def network(seed: int):
        torch.manual_seed(seed)
        return HadushCNN(channels=channels, hidden=32, dropout=0.2)

    xs, ys = make_set(args.source_cases, 1, args.source_scanner, args.image_size)
    xs_test, ys_test = make_set(args.test_cases, 2, args.source_scanner, args.image_size)
    pool_x, pool_y = make_set(max(sizes), 3, args.target_scanner, args.image_size)
    xt, yt = make_set(args.test_cases, 4, args.target_scanner, args.image_size)
    generated = time.perf_counter() - start
    from sklearn.metrics import roc_auc_score

    source = train(network(0), xs, ys, args.source_steps, args.lr, seed=0)
    source_ckpt = work / "source_model.pt"
    torch.save(source.state_dict(), source_ckpt)
    reference = {"source_auc_on_source_test": float(roc_auc_score(ys_test.numpy(), scores(source, xs_test))),
                 "source_auc_on_target_test": float(roc_auc_score(yt.numpy(), scores(source, xt)))}
    y_test = yt.numpy()
    results = {arm: {} for arm in ARMS}
    for n in sizes:
        x_n, y_n = pool_x[:n], pool_y[:n]
        per_arm = {arm: [] for arm in ARMS}
        for seed in range(args.seeds):
            per_arm["scratch"].append(scores(train(network(100 + seed), x_n, y_n, args.steps, args.lr, seed), xt))
            net = prepare(network(100 + seed), source_ckpt)
            per_arm["finetune_all"].append(scores(train(net, x_n, y_n, args.steps, args.lr, seed), xt))
            net = prepare(network(100 + seed), source_ckpt, ["encoder"], FREEZE_PRESETS)
            per_arm["frozen_encoder"].append(scores(train(net, x_n, y_n, args.steps, args.lr, seed), xt))
            scaler = StandardScaler().fit(pooled_features(source, x_n))
            clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced", random_state=seed)
            clf.fit(scaler.transform(pooled_features(source, x_n)), y_n.numpy())
            per_arm["features_logreg"].append(clf.predict_proba(scaler.transform(pooled_features(source, xt)))[:, 1])
        for arm in ARMS:
            auc, low, high = bootstrap_ci(y_test, per_arm[arm], args.n_resamples)
            results[arm][n] = {"auc": auc, "ci95": [low, high],
                               "auc_per_seed": [float(roc_auc_score(y_test, s)) for s in per_arm[arm]]}
        print(f"N={n}: " + ", ".join(f"{a} {results[a][n]['auc']:.3f}" for a in ARMS), flush=True)
        out = {"settings": vars(args), "reference": reference, "results": results,
               "seconds": {"generate": generated, "total": time.perf_counter() - start},
               "target_test_malignant": int(y_test.sum()), "target_test_cases": len(y_test)}
        write_json(work / "transfer_curve.json", out)  # after every N: a stopped run keeps what it measured
    plot(results, reference, args, Path(args.plot))
    print(json.dumps(reference), f"total {out['seconds']['total']:.0f} s", flush=True)
    return out


def plot(results: dict, reference: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.io import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in ARMS:
        ns = sorted(results[arm])
        auc = [results[arm][n]["auc"] for n in ns]
        low = [results[arm][n]["ci95"][0] for n in ns]
        high = [results[arm][n]["ci95"][1] for n in ns]
        ax.plot(ns, auc, marker="o", label=arm)
        ax.fill_between(ns, low, high, alpha=0.15)
    ax.axhline(reference["source_auc_on_target_test"], color="grey", linestyle="--", label="source model, no tuning")
    ax.set_xscale("log")
    ax.set_xlabel(f"labelled target-site cases (scanner {args.target_scanner})")
    ax.set_ylabel(f"ROC AUC, held-out target ({args.test_cases} cases)")
    ax.set_title(f"breast phantom: source scanner {args.source_scanner} ({args.source_cases}) -> "
                 f"{args.target_scanner}; mean of {args.seeds} seeds, 95% CI", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    main()
