"""Learning curve of transfer on a simulated scanner shift (issue 16): when does a source-scanner UNet pay?

Run from the repository root::

    python bundles/cardiac/scripts/benchmark_transfer.py --work_dir /tmp/cardiac_transfer

Source site: ``--source_cases`` patients of simulated scanner ``--source_scanner`` (phantom ``SCANNERS``). Target
site: scanner ``--target_scanner`` (other contrast and a site-wide intensity gradient); a pool from which the first N
patients (``--sizes``) are the labelled training set, and ``--test_cases`` other held-out patients. Every patient
gives its ED and ES short-axis stacks as 2D slices. One 2D MONAI ``UNet`` (the bundle's network, narrower) is trained
on the source, then for each N and seed three arms run on the target site (``common.transfer_curve``):

* ``scratch``: random initialisation, all parameters trained;
* ``finetune_all``: the source network, all parameters trained (``common.transfer.prepare``);
* ``frozen_encoder``: the source network with the bundle's ``encoder`` preset (``common.transfer.unet_encoder``:
  every level's down block and the bottom block) frozen; the up path and output block train.

Every arm trains for the same number of optimiser steps (``--steps``, batches of slices drawn with replacement,
random flips of image and mask). Key metric: Dice (foreground classes RV, MYO, LV averaged) per held-out target
patient over its ED and ES slices (``monai.metrics.compute_dice``, an empty class predicted empty counts 1); per
(arm, N) the mean over patients and seeds and a 95 % bootstrap CI over the test patients. Output:
``<work_dir>/transfer_curve.json`` and a PNG (``--plot``).

Simplifications (stated in the results): volumes are rendered in memory at ``--image_size`` pixels in plane (no
NIfTI round trip, no resampling to the bundle's 2 mm grid, no crop), scaled per volume to [0, 1] between the 1st and
99th percentiles as the bundle does, flips as the only augmentation, a narrow UNet (``--channels``) and plain
slice-wise prediction (no sliding window) so that the curve runs in minutes on a CPU. Numbers from it describe this
phantom, not real cine MRI.
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
from scripts.networks import FREEZE_PRESETS  # noqa: E402
from scripts.phantom import draw_patient_parameters, render_phase  # noqa: E402

CLASSES = 4  # background, RV, MYO, LV


def make_patients(n: int, seed: int, scanner: str, image_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` patients of one simulated scanner; each ``(images (S, 1, H, W) float32 in [0, 1], labels (S, 1, H, W)
    int64)`` with its ED then ES slices, intensities scaled per volume between the 1st and 99th percentiles (clipped).
    Patient ``i`` draws from ``SeedSequence([seed, i])``."""
    patients = []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        p = draw_patient_parameters(rng)
        images, labels = [], []
        for phase in ("ED", "ES"):
            label, image = render_phase(p, phase, image_size, rng, scanner)
            lo, hi = np.percentile(image, [1, 99])
            images.append(np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0))
            labels.append(label)
        x = np.concatenate(images, axis=-1).transpose(2, 0, 1)[:, None].astype(np.float32)
        y = np.concatenate(labels, axis=-1).transpose(2, 0, 1)[:, None]
        patients.append((torch.as_tensor(x), torch.as_tensor(y.astype(np.int64))))
    return patients


def stack(patients) -> tuple[torch.Tensor, torch.Tensor]:
    """All slices of ``patients``: ``(sum S, 1, H, W)`` images and labels."""
    return torch.cat([p[0] for p in patients]), torch.cat([p[1] for p in patients])


def train(net, x, y, steps: int, lr: float, seed: int, batch: int = 16):
    """``steps`` AdamW steps (``common.transfer_curve.train_steps``, image and mask flipped together) on MONAI's
    ``DiceCELoss`` (foreground Dice, batch-wise, plus cross-entropy) as the bundle trains."""
    from monai.losses import DiceCELoss

    loss = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    return tc.train_steps(net, x, y, loss, steps, lr, seed, batch=batch, flip_target=True)


@torch.no_grad()
def dice_per_patient(net, patients) -> np.ndarray:
    """Mean foreground Dice of each patient (its ED and ES slices as one volume), ``(n,)``."""
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    net.eval()
    values = []
    for x, y in patients:
        pred = net(x).argmax(dim=1, keepdim=True)
        # (S, C, H, W) -> one volume (1, C, H, W, S)
        p1, y1 = one_hot(pred, CLASSES).permute(1, 2, 3, 0)[None], one_hot(y, CLASSES).permute(1, 2, 3, 0)[None]
        values.append(float(compute_dice(p1, y1, include_background=False, ignore_empty=False).mean()))
    return np.asarray(values)


def main(argv: list[str] | None = None) -> dict:
    from monai.networks.nets import UNet

    args = tc.parser(__doc__.splitlines()[0], BUNDLE, source_cases=30, test_cases=12, sizes="2,5,10,20", steps=120,
                     lr=3e-3, image_size=48, channels="8,16,32", sites=tc.SCANNER_SITES).parse_args(argv)
    run = tc.start(args)

    def network(seed: int):
        torch.manual_seed(seed)
        return UNet(spatial_dims=2, in_channels=1, out_channels=CLASSES, channels=run.channels,
                    strides=[2] * (len(run.channels) - 1), num_res_units=1, norm="batch")

    source_patients, source_test, pool, target_test = tc.make_sets(run, make_patients, args.source_scanner,
                                                                   args.target_scanner)
    source = train(network(0), *stack(source_patients), args.source_steps, args.lr, seed=0)
    source_ckpt = run.save_source(source)
    reference = tc.source_reference("dice", dice_per_patient(source, source_test).mean(),
                                    dice_per_patient(source, target_test).mean())
    y_test = np.arange(len(target_test))  # the bootstrap resamples test patients; the "scores" are their Dice values
    arms = tc.neural_arms(network, source_ckpt, FREEZE_PRESETS,
                          lambda net, n, seed: train(net, *stack(pool[:n]), args.steps, args.lr, seed),
                          lambda net: dice_per_patient(net, target_test))
    labels = (f"labelled target-site patients (scanner {args.target_scanner})",
              f"mean foreground Dice, held-out target ({args.test_cases} patients)",
              f"cardiac phantom: source scanner {args.source_scanner} ({args.source_cases} patients) -> "
              f"{args.target_scanner}; mean of {args.seeds} seeds, 95% CI")
    return tc.finish(run, reference, arms, y_test, tc.mean_of_scores, "dice", labels,
                     target_test_cases=len(target_test),
                     target_test_slices=int(sum(len(p[0]) for p in target_test)),
                     target_train_slices={n: int(sum(len(p[0]) for p in pool[:n])) for n in run.sizes})


if __name__ == "__main__":
    main()
