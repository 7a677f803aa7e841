"""Benchmark of the brain bundle: accuracy on held-out synthetic cases, a classical baseline, speed and memory.

Run from the repository root::

    .venv/bin/python bundles/brain/scripts/benchmark.py --work_dir /tmp/brain_bench

Steps, each through the bundle's real commands (subprocesses): synthesize a training set (seed 0) and a held-out
set (another seed), train with the demo settings of ``train.json``, evaluate on the held-out set; tune a classical
baseline (per-sequence z-score thresholds) on the training cases and score it on the held-out cases; time
whole-volume inference on one case of the real BraTS size (4 × 240 × 240 × 155, 1 mm) and record each command's
peak RSS (MiB). Results go to ``<work_dir>/benchmark_results.json`` (``common.benchmark``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BUNDLE = HERE.parent
REPO = BUNDLE.parent.parent
sys.path.insert(0, str(BUNDLE))
sys.path.insert(0, str(REPO))

from common.benchmark import config_list, peak_rss_mib, results_path, run_bundle, write_results  # noqa: E402
from scripts.metrics import labels_to_regions, region_metrics  # noqa: E402
from scripts.phantom import SEQUENCES, make_case  # noqa: E402


def bundle(args: list, log: Path) -> dict:
    """Run ``python -m monai.bundle <args>`` from the repository root; return wall seconds and peak RSS (MiB)."""
    return {**run_bundle(args, log), "log": str(log)}


def configs(*names: str) -> str:
    return config_list(BUNDLE, *names)


def _zscore(volume: np.ndarray) -> np.ndarray:
    mask = volume > 0
    out = np.zeros_like(volume, dtype=np.float32)
    if mask.any():
        out[mask] = (volume[mask] - volume[mask].mean()) / (volume[mask].std() + 1e-8)
    return out


def _load(case_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray, tuple]:
    import nibabel as nib

    from common.geometry import load, voxel_sizes

    cid = case_dir.name
    images = {s: _zscore(np.asarray(nib.load(case_dir / f"{cid}_{s}.nii.gz").dataobj, np.float32)) for s in SEQUENCES}
    seg = load(case_dir / f"{cid}_seg.nii.gz")  # spacing of the affine common.geometry decides, as evaluate uses
    return images, np.asarray(seg.dataobj), voxel_sizes(seg)


def baseline_regions(images: dict[str, np.ndarray], t_wt: float, t_et: float, t_tc: float) -> np.ndarray:
    """Thresholds: WT = FLAIR z > t_wt; ET = T1ce z > t_et; TC = ET ∪ (WT ∩ T1 z < t_tc)."""
    brain = images["t1"] != 0
    wt = (images["flair"] > t_wt) & brain
    et = (images["t1ce"] > t_et) & brain
    tc = et | (wt & (images["t1"] < t_tc))
    return np.stack([tc, wt | tc, et])


def classical_baseline(train_dir: Path, test_dir: Path) -> dict:
    """Tune the three thresholds on the training cases (grid search on mean Dice), score on the held-out cases."""
    train = [_load(d) for d in sorted(p for p in train_dir.iterdir() if p.is_dir())]
    grid = {"t_wt": np.arange(0.5, 3.01, 0.25), "t_et": np.arange(0.5, 4.01, 0.25), "t_tc": np.arange(-3.0, 0.51, 0.25)}

    def score(case_list, **t) -> float:  # mean Dice over TC, WT, ET and cases (no HD95: tuning stays cheap)
        return float(np.mean([[_dice_of(p, g) for p, g in zip(baseline_regions(im, **t), labels_to_regions(lab))]
                              for im, lab, _ in case_list]))

    # the regions depend on disjoint thresholds except TC; tune WT and ET first, then TC
    best_wt = max(grid["t_wt"], key=lambda v: np.mean([_dice_of(baseline_regions(im, v, 99, -99)[1], lab > 0)
                                                       for im, lab, _ in train]))
    best_et = max(grid["t_et"], key=lambda v: np.mean([_dice_of(baseline_regions(im, 99, v, -99)[2], lab == 4)
                                                       for im, lab, _ in train]))
    best_tc = max(grid["t_tc"], key=lambda v: score(train, t_wt=best_wt, t_et=best_et, t_tc=v))
    thresholds = {"t_wt": float(best_wt), "t_et": float(best_et), "t_tc": float(best_tc)}
    test = [_load(d) for d in sorted(p for p in test_dir.iterdir() if p.is_dir())]
    rows = [region_metrics(baseline_regions(im, **thresholds), labels_to_regions(lab), sp) for im, lab, sp in test]
    result = {k: float(np.mean([r[k] for r in rows])) for k in ("mean_dice", "dice_tc", "dice_wt", "dice_et")}
    return {"thresholds": thresholds, "train_mean_dice": score(train, **thresholds), **result}


def _dice_of(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2.0 * float((pred & truth).sum()) / float(total)


def write_brats_size_case(folder: Path, seed: int = 7) -> Path:
    """One phantom case at 1 mm, padded/cropped to the BraTS size 240 × 240 × 155, in the BraTS layout."""
    from common.io import save_nifti

    images, label, affine = make_case(seed, 0, spacing=1.0)
    target = (240, 240, 155)
    slices, pads = [], []
    for n, t in zip(label.shape, target):
        start = max(0, (n - t) // 2)
        slices.append(slice(start, start + min(n, t)))
        before = max(0, (t - n) // 2)
        pads.append((before, max(0, t - n - before)))
    shift = np.array([s.start - p[0] for s, p in zip(slices, pads)], dtype=float)
    aff = affine.copy()
    aff[:3, 3] = affine[:3, 3] + affine[:3, :3] @ shift
    cid = "BraTS2021_99999"
    for name, array in [*images.items(), ("seg", label)]:
        data = np.pad(array[tuple(slices)], pads)
        assert data.shape == target
        save_nifti(data.astype(np.int16 if name != "seg" else np.uint8), aff, folder / cid / f"{cid}_{name}.nii.gz")
    return folder / cid


def peer_inference_seconds(repeats: int = 3) -> dict:
    """Time the Model Zoo peer ``brats_mri_segmentation`` in this process, for a same-sweep speed comparison: its
    network (SegResNet, init_filters 16, blocks_down (1, 2, 2, 4), 4.70 M parameters; weights do not change the
    time) under its inferer (one 240 x 240 x 160 window) on a random 1 x 4 x 240 x 240 x 155 volume, as ANCHORS.md
    section 7 timed it. Median of ``repeats`` runs after one warm-up run; peak RSS of this process (MiB)."""
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import SegResNet

    net = SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16, in_channels=4, out_channels=3,
                    dropout_prob=0.2).eval()
    inferer = SlidingWindowInferer(roi_size=(240, 240, 160), sw_batch_size=1, overlap=0.5)
    volume = torch.rand(1, 4, 240, 240, 155)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            start = time.perf_counter()
            inferer(volume, net)
            if i:
                times.append(time.perf_counter() - start)
    return {"median_s": float(np.median(times)), "runs_s": times, "torch_threads": torch.get_num_threads(),
            "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
            "peak_rss_mib_this_process": peak_rss_mib()}


def trainer_seconds(log: Path) -> float | None:
    """The SupervisedTrainer's own run time (training + validation), from its log line."""
    found = re.findall(r"SupervisedTrainer - INFO - Engine run finished\. Time taken: (\d+):(\d+):([\d.]+)",
                       log.read_text())
    if not found:
        return None
    h, m, s = found[-1]
    return int(h) * 3600 + int(m) * 60 + float(s)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", required=True, help="scratch folder for data, checkpoints and logs")
    parser.add_argument("--parts", default="accuracy,baseline,speed",
                        help="comma-separated parts to run: accuracy (train + evaluate), baseline, speed")
    parser.add_argument("--num_train", type=int, default=24, help="synthetic training cases")
    parser.add_argument("--num_test", type=int, default=8, help="held-out synthetic cases (another seed)")
    parser.add_argument("--test_seed", type=int, default=1, help="seed of the held-out set")
    parser.add_argument("--epochs", type=int, default=None, help="override the demo epochs (recorded in the results)")
    parser.add_argument("--ckpt_path", default=None,
                        help="checkpoint for the speed part (default <work_dir>/out/models/model.pt); timing does "
                             "not depend on the weights, only on the network's size")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"accuracy", "baseline", "speed"}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from accuracy, baseline, speed")
    work = Path(args.work_dir)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    train_dir, test_dir, out = work / "train", work / "test", work / "out"
    output = results_path(work)
    result: dict = json.loads(output.read_text()) if output.is_file() else {}
    result.update({"num_train": args.num_train, "num_test": args.num_test})
    if parts & {"accuracy", "baseline"}:
        start = time.perf_counter()
        if not train_dir.is_dir():
            bundle(["run", "--config_file", configs("synthesize"), "--dataset_dir", train_dir, "--num_cases",
                    args.num_train, "--seed", 0], logs / "synth_train.log")
        if not test_dir.is_dir():
            bundle(["run", "--config_file", configs("synthesize"), "--dataset_dir", test_dir, "--num_cases",
                    args.num_test, "--seed", args.test_seed], logs / "synth_test.log")
        result["synthesis_s"] = time.perf_counter() - start
    if "accuracy" in parts:
        defaults = json.loads((BUNDLE / "configs" / "train.json").read_text())
        epochs = args.epochs or defaults["epochs"]
        result["settings"] = "train.json defaults" + ("" if args.epochs is None else f" except --epochs {epochs}")
        result["train"] = bundle(["run", "--config_file", configs("train"), "--dataset_dir", train_dir,
                                  "--output_dir", out, "--epochs", epochs], logs / "train.log")
        result["train"]["trainer_s"] = trainer_seconds(logs / "train.log")
        split = json.loads((out / "splits.json").read_text())
        patches = epochs * len(split["train"]) * defaults["samples_per_case"]
        if result["train"]["trainer_s"]:
            result["train"]["patches"] = patches
            result["train"]["patches_per_s_incl_validation"] = patches / result["train"]["trainer_s"]
        result["evaluate"] = bundle(["run", "--config_file", configs("train", "evaluate"), "--dataset_dir",
                                     test_dir, "--output_dir", out], logs / "evaluate.log")
        result["metrics"] = json.loads((out / "metrics.json").read_text())
    if "baseline" in parts:
        result["baseline"] = classical_baseline(train_dir, test_dir)
    if "metrics" in result and "baseline" in result:
        result["margin_over_baseline"] = result["metrics"]["mean_dice"] - result["baseline"]["mean_dice"]
    if "speed" in parts:
        big = work / "brats_size"
        if not big.is_dir():
            write_brats_size_case(big)
        ckpt = args.ckpt_path or out / "models" / "model.pt"
        for name, extra in (("default_pixdim", []), ("native_1mm", ["--pixdim", "[1.0,1.0,1.0]"])):
            log = logs / f"infer_{name}.log"
            measured = bundle(["run", "--config_file", configs("inference"), "--input_dir", big, "--output_dir",
                               work / f"pred_{name}", "--ckpt_path", ckpt, *extra], log)
            seconds = re.findall(r"BraTS2021_99999: .* \(([\d.]+) s\)", log.read_text())
            measured["case_s"] = float(seconds[-1]) if seconds else None
            result[f"inference_240x240x155_{name}"] = measured
        result["peer_brats_mri_segmentation_inference_240x240x155"] = peer_inference_seconds()
        ours = result["inference_240x240x155_default_pixdim"].get("case_s")
        if ours:
            result["speedup_vs_peer_default_pixdim"] = result["peer_brats_mri_segmentation_inference_240x240x155"][
                "median_s"] / ours
    write_results(work, result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
