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
from scripts.networks import FREEZE_PRESETS, HadushCNN  # noqa: E402
from scripts.phantom import render_case  # noqa: E402
from scripts.transforms import crop_box  # noqa: E402


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
    return tc.train_steps(net, x, y, loss_fn, steps, lr, seed, batch=batch, pretrained_lr_scale=pretrained_lr_scale)


@torch.no_grad()
def scores(net, x) -> np.ndarray:
    net.eval()
    return torch.softmax(net(x), dim=1)[:, 1].numpy()


def main(argv: list[str] | None = None) -> dict:
    args = tc.parser(__doc__.splitlines()[0], BUNDLE, source_cases=400, test_cases=200, sizes="10,25,50,100,200",
                     steps=80, lr=2e-3, image_size=32, channels="4,8,16,16,32", sites=tc.SCANNER_SITES
                     ).parse_args(argv)
    run = tc.start(args)

    def network(seed: int):
        torch.manual_seed(seed)
        return HadushCNN(channels=run.channels, hidden=32, dropout=0.2)

    sets = tc.make_sets(run, make_set, args.source_scanner, args.target_scanner)
    y_test = sets[3][1]
    labels = (f"labelled target-site cases (scanner {args.target_scanner})",
              f"ROC AUC, held-out target ({args.test_cases} cases)",
              f"breast phantom: source scanner {args.source_scanner} ({args.source_cases}) -> "
              f"{args.target_scanner}; mean of {args.seeds} seeds, 95% CI")
    return tc.classifier_curve(run, network, train, scores, sets, FREEZE_PRESETS, labels,
                               target_test_malignant=int(y_test.sum()), target_test_cases=len(y_test))


if __name__ == "__main__":
    main()
