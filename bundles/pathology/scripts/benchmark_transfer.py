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

import sys
from pathlib import Path

import numpy as np
import torch

BUNDLE = Path(__file__).resolve().parent.parent
REPO = BUNDLE.parent.parent
for path in (str(REPO), str(BUNDLE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from common import transfer_curve as tc  # noqa: E402
from scripts.networks import FREEZE_PRESETS, PatchClassifier  # noqa: E402
from scripts.phantom import make_patch  # noqa: E402
from scripts.tissue import TEST_SITE, TRAIN_SITES  # noqa: E402


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
    return tc.train_steps(net, x, y, lambda logits, target: bce(logits[:, 0], target), steps, lr, seed, batch=batch)


@torch.no_grad()
def scores(net, x) -> np.ndarray:
    net.eval()
    return torch.sigmoid(net(x)[:, 0]).numpy()


def main(argv: list[str] | None = None) -> dict:
    args = tc.parser(__doc__.splitlines()[0], BUNDLE, source_cases=600, test_cases=300, sizes="10,25,50,100,200",
                     steps=80, lr=2e-3, image_size=48, channels="8,16,32",
                     sites=[("--target_site", {"type": int, "default": TEST_SITE})]).parse_args(argv)
    run = tc.start(args)
    source_sites = tuple(s for s in TRAIN_SITES if s != args.target_site)

    def network(seed: int):
        torch.manual_seed(seed)
        return PatchClassifier(in_channels=3, channels=run.channels, dropout=0.2)

    sets = tc.make_sets(run, make_set, source_sites, (args.target_site,))
    pool_y, y_test = sets[2][1], sets[3][1]
    labels = (f"labelled target-site patches (site {args.target_site})",
              f"ROC AUC, held-out target ({args.test_cases} patches)",
              f"pathology phantom: staining sites {list(source_sites)} ({args.source_cases}) -> site "
              f"{args.target_site}; mean of {args.seeds} seeds, 95% CI")
    return tc.classifier_curve(run, network, train, scores, sets, FREEZE_PRESETS, labels,
                               source_sites=list(source_sites), target_test_tumour=int(y_test.sum()),
                               target_test_cases=len(y_test),
                               target_train_tumour={n: int(pool_y[:n].sum()) for n in run.sizes})


if __name__ == "__main__":
    main()
