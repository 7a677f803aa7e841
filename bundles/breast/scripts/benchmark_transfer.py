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
from common.transfer import prepare  # noqa: E402
from common.transfer_curve import auc_metric, curve_record, plot_curve, run_curve, train_steps  # noqa: E402
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
    """``steps`` AdamW steps on batches drawn with replacement (random flips); class-balanced cross-entropy
    (``common.transfer_curve.train_steps``)."""
    counts = torch.bincount(y, minlength=2).float().clamp(min=1)
    loss_fn = torch.nn.CrossEntropyLoss(weight=counts.sum() / (2 * counts))
    return train_steps(net, x, y, loss_fn, steps, lr, seed, batch=batch, pretrained_lr_scale=pretrained_lr_scale)


@torch.no_grad()
def scores(net, x) -> np.ndarray:
    net.eval()
    return torch.softmax(net(x), dim=1)[:, 1].numpy()


@torch.no_grad()
def pooled_features(net, x) -> np.ndarray:
    net.eval()
    return net.features(x).mean(dim=(2, 3)).numpy()


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

    def scratch(n, seed):
        return scores(train(network(100 + seed), pool_x[:n], pool_y[:n], args.steps, args.lr, seed), xt)

    def finetune_all(n, seed):
        net = prepare(network(100 + seed), source_ckpt)
        return scores(train(net, pool_x[:n], pool_y[:n], args.steps, args.lr, seed), xt)

    def frozen_encoder(n, seed):
        net = prepare(network(100 + seed), source_ckpt, ["encoder"], FREEZE_PRESETS)
        return scores(train(net, pool_x[:n], pool_y[:n], args.steps, args.lr, seed), xt)

    def features_logreg(n, seed):
        x_n, y_n = pool_x[:n], pool_y[:n]
        scaler = StandardScaler().fit(pooled_features(source, x_n))
        clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced", random_state=seed)
        clf.fit(scaler.transform(pooled_features(source, x_n)), y_n.numpy())
        return clf.predict_proba(scaler.transform(pooled_features(source, xt)))[:, 1]

    arms = dict(zip(ARMS, (scratch, finetune_all, frozen_encoder, features_logreg)))
    out: dict = {}

    def record(results):  # after every N: a stopped run keeps what it measured
        out.update(curve_record(vars(args), reference, results,
                                {"generate": generated, "total": time.perf_counter() - start},
                                target_test_malignant=int(y_test.sum()), target_test_cases=len(y_test)))
        write_json(work / "transfer_curve.json", out)

    results = run_curve(sizes, args.seeds, arms, y_test, auc_metric, args.n_resamples,
                        log=lambda line: print(line, flush=True), after_size=record)
    plot(results, reference, args, Path(args.plot))
    print(json.dumps(reference), f"total {out['seconds']['total']:.0f} s", flush=True)
    return out


def plot(results: dict, reference: dict, args, path: Path) -> None:
    """The curve as PNG (``common.transfer_curve.plot_curve``)."""
    plot_curve(results, path, "auc", f"labelled target-site cases (scanner {args.target_scanner})",
               f"ROC AUC, held-out target ({args.test_cases} cases)",
               f"breast phantom: source scanner {args.source_scanner} ({args.source_cases}) -> "
               f"{args.target_scanner}; mean of {args.seeds} seeds, 95% CI",
               reference=reference["source_auc_on_target_test"])


if __name__ == "__main__":
    main()
