"""Learning curve of transfer to an unseen staining site (issue 16): when does starting from the training sites pay?

Run from the repository root::

    python bundles/pathology/scripts/benchmark_transfer.py --work_dir /tmp/pathology_transfer

Source: ``--source_cases`` PCam-like patches from the training staining sites (``scripts.tissue.TRAIN_SITES``, taken
in turn). Target: the unseen site ``--target_site`` (default ``TEST_SITE``, the eosin-heavy, haematoxylin-faded
laboratory); a pool from which the first N patches (``--sizes``) are the labelled training set, and ``--test_cases``
other held-out patches. One ``PatchClassifier`` is trained on the source, then for each N and seed four arms run on
the target site (``common.transfer_curve``):

* ``scratch``: random initialisation, all parameters trained;
* ``finetune_all``: the source network, all parameters trained (``common.transfer.prepare``);
* ``frozen_encoder``: the source network with the ``encoder`` preset (``features``) frozen: only the head trains;
* ``features_logreg``: scikit-learn logistic regression on the frozen source network's globally pooled features.

Every neural arm trains for the same number of optimiser steps (``--steps``). Key metric: ROC AUC (tumour centre vs
not) on the held-out target set, mean over seeds with a 95 % bootstrap CI. Output: ``<work_dir>/transfer_curve.json``
and a PNG (``--plot``).

Simplifications (stated in the results): patches are rendered in memory (no HDF5 round trip), downsampled by area
from 96 to ``--image_size`` pixels, scaled to [0, 1] **without** the bundle's Macenko stain normalisation (which
removes most of this shift; the curve measures what transfer does to raw colour) and without its HED augmentation
(flips only); a narrow network (``--channels``) so that the curve runs in minutes on a CPU. Numbers from it describe
this phantom, not real slides.
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
from common.transfer import prepare  # noqa: E402
from common.transfer_curve import auc_metric, curve_record, plot_curve, run_curve, train_steps  # noqa: E402
from scripts.networks import FREEZE_PRESETS, PatchClassifier  # noqa: E402
from scripts.phantom import make_patch  # noqa: E402
from scripts.tissue import TEST_SITE, TRAIN_SITES  # noqa: E402

ARMS = ("scratch", "finetune_all", "frozen_encoder", "features_logreg")


def make_set(n: int, seed: int, sites: tuple[int, ...], image_size: int):
    """``n`` patches, patch ``i`` from site ``sites[i % len(sites)]``, tumour with probability 0.5 (the label is the
    phantom's PCam label: tumour in the centre 32 x 32); images ``(n, 3, S, S)`` float32 in [0, 1], labels ``(n,)``
    float32 (1 = tumour). Patch ``i`` uses generator seed ``seed * 100003 + i``."""
    images, labels = [], []
    for i in range(n):
        rng = np.random.default_rng(seed * 100003 + i)
        image, label = make_patch(rng, bool(rng.random() < 0.5), sites[i % len(sites)])
        images.append(image)
        labels.append(label)
    x = torch.as_tensor(np.stack(images), dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="area")
    return x.contiguous(), torch.as_tensor(labels, dtype=torch.float32)


def train(net, x, y, steps: int, lr: float, seed: int, batch: int = 32):
    """``steps`` AdamW steps (``common.transfer_curve.train_steps``), class-balanced BCE on the one logit."""
    positives = float(y.sum())
    pos_weight = torch.tensor([(len(y) - positives) / positives]) if 0 < positives < len(y) else None
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    return train_steps(net, x, y, lambda logits, target: bce(logits[:, 0], target), steps, lr, seed, batch=batch)


@torch.no_grad()
def scores(net, x) -> np.ndarray:
    net.eval()
    return torch.sigmoid(net(x)[:, 0]).numpy()


@torch.no_grad()
def pooled_features(net, x) -> np.ndarray:
    net.eval()
    return net.features(x).mean(dim=(2, 3)).numpy()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--source_cases", type=int, default=600)
    parser.add_argument("--test_cases", type=int, default=300)
    parser.add_argument("--sizes", default="10,25,50,100,200")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--source_steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--image_size", type=int, default=48)
    parser.add_argument("--channels", default="8,16,32")
    parser.add_argument("--target_site", type=int, default=TEST_SITE)
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
    source_sites = tuple(s for s in TRAIN_SITES if s != args.target_site)

    def network(seed: int):
        torch.manual_seed(seed)
        return PatchClassifier(in_channels=3, channels=channels, dropout=0.2)

    xs, ys = make_set(args.source_cases, 1, source_sites, args.image_size)
    xs_test, ys_test = make_set(args.test_cases, 2, source_sites, args.image_size)
    pool_x, pool_y = make_set(max(sizes), 3, (args.target_site,), args.image_size)
    xt, yt = make_set(args.test_cases, 4, (args.target_site,), args.image_size)
    generated = time.perf_counter() - start

    source = train(network(0), xs, ys, args.source_steps, args.lr, seed=0)
    source_ckpt = work / "source_model.pt"
    torch.save(source.state_dict(), source_ckpt)
    y_test = yt.numpy()
    reference = {"source_auc_on_source_test": auc_metric(ys_test.numpy(), scores(source, xs_test)),
                 "source_auc_on_target_test": auc_metric(y_test, scores(source, xt))}
    print(json.dumps(reference), flush=True)

    def scratch(n, seed):
        return scores(train(network(100 + seed), pool_x[:n], pool_y[:n], args.steps, args.lr, seed), xt)

    def finetune_all(n, seed):
        net = prepare(network(100 + seed), source_ckpt)
        return scores(train(net, pool_x[:n], pool_y[:n], args.steps, args.lr, seed), xt)

    def frozen_encoder(n, seed):
        net = prepare(network(100 + seed), source_ckpt, ["encoder"], FREEZE_PRESETS)
        return scores(train(net, pool_x[:n], pool_y[:n], args.steps, args.lr, seed), xt)

    def features_logreg(n, seed):
        x_n, y_n = pool_x[:n], pool_y[:n].numpy().astype(int)
        if len(np.unique(y_n)) < 2:  # one class among the N: no classifier can be fitted; a constant score
            return np.full(len(xt), float(y_n[0]))
        scaler = StandardScaler().fit(pooled_features(source, x_n))
        clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced", random_state=seed)
        clf.fit(scaler.transform(pooled_features(source, x_n)), y_n)
        return clf.predict_proba(scaler.transform(pooled_features(source, xt)))[:, 1]

    arms = dict(zip(ARMS, (scratch, finetune_all, frozen_encoder, features_logreg)))
    out: dict = {}

    def record(results):  # after every N: a stopped run keeps what it measured
        out.update(curve_record(vars(args), reference, results,
                                {"generate": generated, "total": time.perf_counter() - start},
                                source_sites=list(source_sites), target_test_tumour=int(y_test.sum()),
                                target_test_cases=len(y_test),
                                target_train_tumour={n: int(pool_y[:n].sum()) for n in sizes}))
        write_json(work / "transfer_curve.json", out)

    results = run_curve(sizes, args.seeds, arms, y_test, auc_metric, args.n_resamples,
                        log=lambda line: print(line, flush=True), after_size=record)
    plot_curve(results, args.plot, "auc", f"labelled target-site patches (site {args.target_site})",
               f"ROC AUC, held-out target ({args.test_cases} patches)",
               f"pathology phantom: staining sites {list(source_sites)} ({args.source_cases}) -> site "
               f"{args.target_site}; mean of {args.seeds} seeds, 95% CI",
               reference=reference["source_auc_on_target_test"])
    print(f"total {out['seconds']['total']:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    main()
