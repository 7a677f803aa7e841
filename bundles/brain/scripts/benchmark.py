"""Benchmark of the brain bundle: held-out accuracy over a grid of seeds, a classical baseline, speed and memory.

Run from the repository root::

    .venv/bin/python bundles/brain/scripts/benchmark.py --work_dir /tmp/brain_bench

Parts, each through the bundle's real commands (subprocesses):

* ``accuracy``: synthesize one training set (seed 0, ``--num_train`` cases) and one held-out set per
  ``--heldout_seeds`` (``--num_test`` cases each); train once per ``--train_seeds`` (the training ``--seed``: split,
  initialisation, sampling, augmentation) with the demo settings of ``train.json`` plus ``--train_args`` (a lever
  under test; ``--label`` names the runs); evaluate every trained model on every held-out set, with the
  post-processing fitted at the end of training and, for comparison, without it (threshold 0.5, no component
  removed). Prints a table, one row per (training seed, held-out seed), and its mean, spread and minimum.
* ``baseline``: tune a classical method (per-sequence z-score thresholds) on the training cases and score it on the
  first held-out set.
* ``speed``: time whole-volume inference on one case of the real BraTS size (4 × 240 × 240 × 155, 1 mm): the
  inference workflow's own time for the case (ignite's ``InferenceEvaluator``: loading, resampling, network,
  post-processing, writing; imports excluded) and each command's peak RSS (MiB), beside the Model Zoo peer's inferer
  (network only) in the same sweep.

Results go to ``<work_dir>/benchmark_results.json`` (``common.benchmark``); runs of several labels accumulate there
under ``seed_grid``, so levers measured one at a time on the same seeds and data sit side by side. Finished runs are
reused when the script is run again (delete ``<work_dir>/<label>`` to retrain).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BUNDLE = HERE.parent
REPO = BUNDLE.parent.parent
sys.path.insert(0, str(BUNDLE))
sys.path.insert(0, str(REPO))

from common.benchmark import config_list, ignite_seconds, peak_rss_mib, results_path, run_bundle, write_results  # noqa: E402
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


def engine_seconds(log: Path, engine: str = "SupervisedTrainer") -> float | None:
    """An ignite engine's own run time (s) from its last ``Engine run finished`` log line: the ``SupervisedTrainer``'s
    (training + validation), or the inference workflow's ``InferenceEvaluator`` (loading, network, post-processing
    and writing of every case); None when the log has no such line."""
    runs = ignite_seconds(log.read_text(), engine, "run")
    return runs[-1] if runs else None


def trainer_seconds(log: Path) -> float | None:
    """The SupervisedTrainer's own run time (training + validation), from its log line."""
    return engine_seconds(log, "SupervisedTrainer")


def _seeds(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


def _per_case(out: Path, column: str) -> list[float]:
    with open(out / "metrics_per_case.csv", newline="") as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column) not in (None, "", "nan")]


def _run_row(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    hd95_wt = _per_case(out, "hd95_wt")
    return {**{k: metrics[k] for k in ("mean_dice", "dice_tc", "dice_wt", "dice_et")},
            "hd95_wt_median_mm": float(np.median(hd95_wt)) if hd95_wt else None, "num_cases": len(_per_case(
                out, "mean_dice"))}


def seed_grid(work: Path, label: str, train_dir: Path, test_dirs: dict[int, Path], train_seeds: list[int],
              train_args: list[str], ablate: bool, eval_variants: dict[str, list[str]] | None = None) -> dict:
    """Train once per training seed (``<work>/<label>/seed<s>``), evaluate on every held-out set with the fitted
    post-processing (``heldout<h>``), with ``ablate`` also without it (``heldout<h>_raw``), and once per
    ``eval_variants`` entry (name → extra evaluate options, e.g. ``{"overlap50": ["--sw_overlap", "0.5"]}``:
    ``heldout<h>_<name>``, an evaluation-time lever on the same models); return the runs and their summary (mean,
    sample standard deviation, minimum and maximum over the runs)."""
    runs, trainings = [], []
    for seed in train_seeds:
        out = work / label / f"seed{seed}"
        logs = out / "logs"
        done = out / "train_result.json"
        if not done.is_file():
            measured = bundle(["run", "--config_file", configs("train"), "--dataset_dir", train_dir, "--output_dir",
                               out, "--seed", seed, *train_args], logs / "train.log")
            measured["trainer_s"] = trainer_seconds(logs / "train.log")
            settings = json.loads((out / "models" / "model.json").read_text())
            measured["postprocessing"] = {k: settings.get(k) for k in (
                "region_thresholds", "min_component_mm3", "min_region_mm3", "min_et_enhancement",
                "postprocessing_fit")}
            done.write_text(json.dumps(measured, indent=2))
        trainings.append({"seed": seed, **json.loads(done.read_text())})
        for heldout, test_dir in test_dirs.items():
            row = {"train_seed": seed, "heldout_seed": heldout}
            variants = [("", [])] + ([("_raw", ["--region_thresholds", "[0.5,0.5,0.5]", "--min_component_mm3",
                                                "[0.0,0.0,0.0]", "--min_region_mm3", "[0.0,0.0,0.0]",
                                                "--min_et_enhancement", "off"])]
                                     if ablate else [])
            variants += [(f"_{name}", extra) for name, extra in (eval_variants or {}).items()]
            for suffix, extra in variants:
                evaluated = out / f"heldout{heldout}{suffix}"
                if not (evaluated / "metrics.json").is_file():
                    bundle(["run", "--config_file", configs("train", "evaluate"), "--dataset_dir", test_dir,
                            "--output_dir", evaluated, "--ckpt_path", out / "models" / "model.pt", *extra],
                           logs / f"evaluate_heldout{heldout}{suffix}.log")
                row.update({f"{k}{suffix}": v for k, v in _run_row(evaluated).items()})
            runs.append(row)
    summary = {}
    keys = ["mean_dice", "dice_tc", "dice_wt", "dice_et", "hd95_wt_median_mm", "mean_dice_raw", "dice_et_raw",
            "hd95_wt_median_mm_raw"]
    for name in eval_variants or {}:
        keys += [f"mean_dice_{name}", f"dice_et_{name}", f"hd95_wt_median_mm_{name}"]
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            summary[key] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1
                            else 0.0, "min": float(np.min(values)), "max": float(np.max(values))}
    train_s = [t["trainer_s"] for t in trainings if t.get("trainer_s")]
    summary["trainer_s_mean"] = float(np.mean(train_s)) if train_s else None
    return {"train_args": train_args, "eval_variants": eval_variants or {}, "train_seeds": train_seeds,
            "heldout_seeds": list(test_dirs),
            "trainings": trainings, "runs": runs, "summary": summary}


def print_grid(label: str, grid: dict) -> None:
    """The table of one label's runs (held-out Dice with the fitted post-processing; raw = without it)."""
    print(f"\nseed grid '{label}' (train args: {' '.join(grid['train_args']) or 'demo defaults'})")
    head = ("train seed", "held-out seed", "mean Dice", "TC", "WT", "ET", "WT HD95 median (mm)", "mean Dice raw",
            "ET raw", "WT HD95 raw")
    keys = ("mean_dice", "dice_tc", "dice_wt", "dice_et", "hd95_wt_median_mm", "mean_dice_raw", "dice_et_raw",
            "hd95_wt_median_mm_raw")
    for name in grid.get("eval_variants", {}):
        head += (f"mean Dice {name}", f"ET {name}", f"WT HD95 {name}")
        keys += (f"mean_dice_{name}", f"dice_et_{name}", f"hd95_wt_median_mm_{name}")
    print(" | ".join(head))

    def cell(v: object) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    for r in grid["runs"]:
        print(" | ".join([str(r["train_seed"]), str(r["heldout_seed"])] + [cell(r.get(k)) for k in keys]))
    for stat in ("mean", "sd", "min", "max"):
        print(" | ".join([stat, ""] + [cell(grid["summary"].get(k, {}).get(stat)) for k in keys]))
    print(f"training: {cell(grid['summary'].get('trainer_s_mean'))} s per run in the trainer (mean)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", required=True, help="scratch folder for data, checkpoints and logs")
    parser.add_argument("--parts", default="accuracy,baseline,speed",
                        help="comma-separated parts to run: accuracy (seed grid), baseline, speed")
    parser.add_argument("--num_train", type=int, default=24, help="synthetic training cases (seed 0)")
    parser.add_argument("--num_test", type=int, default=16, help="cases in each held-out set")
    parser.add_argument("--train_seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--heldout_seeds", default="1,2", help="comma-separated seeds of the held-out sets")
    parser.add_argument("--train_args", default="",
                        help='extra options for the train command, e.g. "--epochs 40" (a lever under test)')
    parser.add_argument("--label", default="demo", help="name of this recipe's runs (a folder of work_dir)")
    parser.add_argument("--eval_variants", default="",
                        help='evaluation-time levers on the same models, "name=options;name=options", e.g. '
                             '"overlap50=--sw_overlap 0.5"')
    parser.add_argument("--no_ablation", action="store_true",
                        help="skip the evaluation without the fitted post-processing")
    parser.add_argument("--ckpt_path", default=None,
                        help="checkpoint for the speed part (default: the first training seed's model); timing does "
                             "not depend on the weights, only on the network's size")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"accuracy", "baseline", "speed"}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from accuracy, baseline, speed")
    work = Path(args.work_dir)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    train_seeds, heldout_seeds = _seeds(args.train_seeds), _seeds(args.heldout_seeds)
    if not train_seeds or not heldout_seeds:
        parser.error("--train_seeds and --heldout_seeds need at least one seed each")
    train_dir = work / "train"
    test_dirs = {h: work / f"heldout_seed{h}" for h in heldout_seeds}
    output = results_path(work)
    result: dict = json.loads(output.read_text()) if output.is_file() else {}
    result.update({"num_train": args.num_train, "num_test": args.num_test})
    if parts & {"accuracy", "baseline"}:
        start = time.perf_counter()
        for folder, seed, n in [(train_dir, 0, args.num_train)] + [(d, h, args.num_test) for h, d in test_dirs.items()]:
            if not folder.is_dir():
                bundle(["run", "--config_file", configs("synthesize"), "--dataset_dir", folder, "--num_cases", n,
                        "--seed", seed], logs / f"synthesize_{folder.name}.log")
        result["synthesis_s"] = time.perf_counter() - start
    if "accuracy" in parts:
        variants = dict(v.split("=", 1) for v in args.eval_variants.split(";") if v.strip())
        grid = seed_grid(work, args.label, train_dir, test_dirs, train_seeds, shlex.split(args.train_args),
                         not args.no_ablation, {k.strip(): shlex.split(v) for k, v in variants.items()})
        result.setdefault("seed_grid", {})[args.label] = grid
        print_grid(args.label, grid)
    if "baseline" in parts:
        result["baseline"] = classical_baseline(train_dir, test_dirs[heldout_seeds[0]])
        result["baseline"]["heldout_seed"] = heldout_seeds[0]
    if "speed" in parts:
        big = work / "brats_size"
        if not big.is_dir():
            write_brats_size_case(big)
        ckpt = args.ckpt_path or work / args.label / f"seed{train_seeds[0]}" / "models" / "model.pt"
        for name, extra in (("default_pixdim", []), ("native_1mm", ["--pixdim", "[1.0,1.0,1.0]"])):
            log = logs / f"infer_{name}.log"
            measured = bundle(["run", "--config_file", configs("inference"), "--input_dir", big, "--output_dir",
                               work / f"pred_{name}", "--ckpt_path", ckpt, *extra], log)
            measured["case_s"] = engine_seconds(log, "InferenceEvaluator")  # one case: the whole case
            if measured["case_s"] is None:
                raise RuntimeError(f"{log}: no 'InferenceEvaluator ... Engine run finished' line to time the case by")
            result[f"inference_240x240x155_{name}"] = measured
        result["peer_brats_mri_segmentation_inference_240x240x155"] = peer_inference_seconds()
        ours = result["inference_240x240x155_default_pixdim"].get("case_s")
        if ours:
            result["speedup_vs_peer_default_pixdim"] = result["peer_brats_mri_segmentation_inference_240x240x155"][
                "median_s"] / ours
    print(f"results: {write_results(work, result)}")
    return result


if __name__ == "__main__":
    main()
