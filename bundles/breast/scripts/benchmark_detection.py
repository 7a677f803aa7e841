"""Benchmark of the breast mass detector (issue 20): FROC, AP50 and the classical baseline on a held-out phantom,
inference time per full mammogram and peak memory.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python bundles/breast/scripts/benchmark_detection.py --work_dir /tmp/breast_det_bench

It synthesizes a training set (``--num_cases`` mammograms, ``--seed``) and a held-out set of another seed (its test
CSVs are the test set), trains with ``train_detection.json`` (``--epochs``), evaluates and infers through the bundle
commands (subprocesses, ``common.benchmark.train_evaluate_infer``: logs in ``<work_dir>/logs``), scores the classical
baseline (:func:`baseline_rows`: multi-scale Laplacian-of-Gaussian blob detection, its scale range fitted to the
training boxes and its scale factor chosen by training FROC) with the same metrics, times inference per image
in-process and writes everything to ``<work_dir>/benchmark_results.json`` (``common.benchmark``, atomically; peak RSS
of each command in MiB).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

BUNDLE = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(BUNDLE.parent.parent), str(BUNDLE)]  # common, and this bundle's scripts package

from common.benchmark import held_out_options, median_ms_per_item, train_evaluate_infer, write_results  # noqa: E402
from scripts.benchmark import held_out_sets  # noqa: E402


def _windowed_grid(item: dict, scale: float) -> tuple[np.ndarray, tuple, tuple]:
    """The mammogram on the detector's grid, windowed to [0, 1] as the network sees it (before denoising)."""
    from scripts.detection import LoadMammogramd

    d = LoadMammogramd(scale)({"image": item["image"]})
    image = d["image"][0]
    low, high = np.percentile(image, [0.5, 99.5])
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1), tuple(d["input_shape"]), tuple(d["grid_shape"])


def blob_detections(image: np.ndarray, sigmas: np.ndarray, max_detections: int = 30) -> list[dict]:
    """Multi-scale LoG blobs: local maxima over position and scale of ``-sigma^2 * LoG_sigma(image)`` inside the
    breast (image > 0.05); box side 2 sqrt(2) sigma; score = the normalised response (grid pixels, row/col order)."""
    from scipy import ndimage
    from skimage.feature import peak_local_max

    stack = np.stack([-(s**2) * ndimage.gaussian_laplace(image, s) for s in sigmas])
    stack[:, image < 0.05] = 0
    peaks = peak_local_max(stack, min_distance=2, threshold_abs=1e-3, num_peaks=max_detections, exclude_border=False)
    out = []
    for k, r, c in peaks:
        half = np.sqrt(2) * sigmas[k]
        out.append({"box": [r - half, c - half, r + half, c + half], "score": float(stack[k, r, c]),
                    "label": "malignant", "p_malignant": 0.5})
    return out


def baseline_rows(items: list[dict], scale: float, sigmas: np.ndarray) -> list[dict]:
    """Per-image evaluation rows (:func:`scripts.detection.image_row`) of the blob baseline."""
    from scripts.detection import image_row, to_input_boxes

    rows = []
    for item in items:
        image, shape, grid = _windowed_grid(item, scale)
        found = blob_detections(image, sigmas)
        for d in found:
            d["box"] = to_input_boxes(np.asarray(d["box"])[None], shape, grid)[0].tolist()
        gt = np.asarray(item["boxes"], float).reshape(-1, 4)[:, [1, 0, 3, 2]]  # row/col -> x/y (DICOM)
        rows.append(image_row(item["case"], found, gt, item["labels"]))
    return rows


def baseline(train_dir: Path, test_dir: Path, scale: float) -> dict:
    """Fit the blob baseline on the training images (scale range from the training boxes; the factor on it with the
    best training FROC) and score it on the held-out test images."""
    from scripts.detection import ap50, evaluation_cases, froc, sensitivity_at_1fp, training_split

    train, test = training_split(train_dir)["train"], evaluation_cases(test_dir)
    sides = np.concatenate([np.sqrt(np.prod(np.diff(np.asarray(i["boxes"]).reshape(-1, 2, 2), axis=1)[:, 0], 1))
                            for i in train if i["boxes"]]) * scale
    low, high = np.percentile(sides, [5, 95]) / (2 * np.sqrt(2))
    tuning = {}
    for factor in (0.6, 0.8, 1.0, 1.25):
        sigmas = np.geomspace(low * factor, high * factor, 6)
        tuning[factor] = froc(baseline_rows(train[:40], scale, sigmas)) or 0.0
    best = max(tuning, key=tuning.get)
    rows = baseline_rows(test, scale, np.geomspace(low * best, high * best, 6))
    return {"froc": froc(rows), "ap50": ap50(rows), "sensitivity_at_1fp": sensitivity_at_1fp(rows),
            "sigma_factor": best, "train_froc_by_factor": {str(k): v for k, v in tuning.items()},
            "sigma_range_grid_px": [float(low * best), float(high * best)]}


def time_inference(test_dir: Path, ckpt: Path, threads: int) -> dict:
    """Median ms per full mammogram: reading + preprocessing + detection (batch 1), and detection alone."""
    import torch
    from monai.bundle import ConfigParser

    from scripts.detection import detect, evaluation_cases

    torch.set_num_threads(threads)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference_detection.json"))
    parser["bundle_root"] = str(BUNDLE)
    parser["ckpt_path"] = str(ckpt)
    net, pre = parser.get_parsed_content("network_def"), parser.get_parsed_content("preprocessing")
    net.load_state_dict(torch.load(ckpt, map_location="cpu"))
    items = evaluation_cases(test_dir)
    end_to_end, network = median_ms_per_item(items, lambda item: pre({"image": item["image"]})["image"],
                                             lambda x: detect(net, [x]), warmup=3)
    return {"threads": threads, "ms_per_image_end_to_end": end_to_end, "ms_per_image_network": network,
            "images": len(items)}


def main(args: argparse.Namespace) -> dict:
    work = Path(args.work_dir)
    train_dir, test_dir, made = held_out_sets(args, "_detection")
    result: dict = {"settings": vars(args), **{f"synthesize_s_seed{seed}": s for seed, s in made.items()}}
    result.update(train_evaluate_infer(BUNDLE, work, train_dir, test_dir, test_dir, workflow="_detection",
                                       train_args=["--epochs", args.epochs] if args.epochs else [],
                                       train=not args.skip_training))
    result["baseline_log_blobs"] = baseline(train_dir, test_dir, args.scale)
    result["speed"] = [time_inference(test_dir, work / "out" / "models" / "model.pt", 1)]
    result["case_study_hadush_2020"] = {"detection_accuracy": 0.9186, "sensitivity": 0.9467, "auc": 0.922,
                                        "data": "private mammograms from Ethiopian hospitals (not CBIS-DDSM)"}
    write_results(work, result)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = held_out_options(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), 120, "mammograms",
                              "train_detection.json")
    parser.add_argument("--scale", type=float, default=0.5, help="the detector's grid scale (as trained)")
    parser.add_argument("--skip_training", action="store_true", help="reuse the model in <work_dir>/out")
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(main(parse_args()), indent=2))
