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
from common.transfer_curve import curve_record, mean_of_scores, plot_curve, run_curve, train_steps  # noqa: E402
from scripts.networks import FREEZE_PRESETS  # noqa: E402
from scripts.phantom import draw_patient_parameters, render_phase  # noqa: E402

ARMS = ("scratch", "finetune_all", "frozen_encoder")
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
    return train_steps(net, x, y, loss, steps, lr, seed, batch=batch, flip_target=True)


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--source_cases", type=int, default=30)
    parser.add_argument("--test_cases", type=int, default=12)
    parser.add_argument("--sizes", default="2,5,10,20")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--source_steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--image_size", type=int, default=48)
    parser.add_argument("--channels", default="8,16,32")
    parser.add_argument("--source_scanner", default="A")
    parser.add_argument("--target_scanner", default="B")
    parser.add_argument("--n_resamples", type=int, default=500)
    parser.add_argument("--plot", default=str(BUNDLE / "docs" / "transfer_curve.png"))
    args = parser.parse_args(argv)
    from monai.networks.nets import UNet

    torch.set_num_threads(1)
    start = time.perf_counter()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    channels = [int(c) for c in args.channels.split(",")]

    def network(seed: int):
        torch.manual_seed(seed)
        return UNet(spatial_dims=2, in_channels=1, out_channels=CLASSES, channels=channels,
                    strides=[2] * (len(channels) - 1), num_res_units=1, norm="batch")

    source_patients = make_patients(args.source_cases, 1, args.source_scanner, args.image_size)
    source_test = make_patients(args.test_cases, 2, args.source_scanner, args.image_size)
    pool = make_patients(max(sizes), 3, args.target_scanner, args.image_size)
    target_test = make_patients(args.test_cases, 4, args.target_scanner, args.image_size)
    generated = time.perf_counter() - start

    source = train(network(0), *stack(source_patients), args.source_steps, args.lr, seed=0)
    source_ckpt = work / "source_model.pt"
    torch.save(source.state_dict(), source_ckpt)
    reference = {"source_dice_on_source_test": float(dice_per_patient(source, source_test).mean()),
                 "source_dice_on_target_test": float(dice_per_patient(source, target_test).mean())}
    print(json.dumps(reference), flush=True)
    y_test = np.arange(len(target_test))  # the bootstrap resamples test patients; the "scores" are their Dice values

    def scratch(n, seed):
        return dice_per_patient(train(network(100 + seed), *stack(pool[:n]), args.steps, args.lr, seed), target_test)

    def finetune_all(n, seed):
        net = prepare(network(100 + seed), source_ckpt)
        return dice_per_patient(train(net, *stack(pool[:n]), args.steps, args.lr, seed), target_test)

    def frozen_encoder(n, seed):
        net = prepare(network(100 + seed), source_ckpt, ["encoder"], FREEZE_PRESETS)
        return dice_per_patient(train(net, *stack(pool[:n]), args.steps, args.lr, seed), target_test)

    arms = dict(zip(ARMS, (scratch, finetune_all, frozen_encoder)))
    out: dict = {}

    def record(results):  # after every N: a stopped run keeps what it measured
        out.update(curve_record(vars(args), reference, results,
                                {"generate": generated, "total": time.perf_counter() - start},
                                target_test_cases=len(target_test),
                                target_test_slices=int(sum(len(p[0]) for p in target_test)),
                                target_train_slices={n: int(sum(len(p[0]) for p in pool[:n])) for n in sizes}))
        write_json(work / "transfer_curve.json", out)

    results = run_curve(sizes, args.seeds, arms, y_test, mean_of_scores, args.n_resamples, key="dice",
                        log=lambda line: print(line, flush=True), after_size=record)
    plot_curve(results, args.plot, "dice", f"labelled target-site patients (scanner {args.target_scanner})",
               f"mean foreground Dice, held-out target ({args.test_cases} patients)",
               f"cardiac phantom: source scanner {args.source_scanner} ({args.source_cases} patients) -> "
               f"{args.target_scanner}; mean of {args.seeds} seeds, 95% CI",
               reference=reference["source_dice_on_target_test"])
    print(f"total {out['seconds']['total']:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    main()
