"""Benchmark of the eye bundle: accuracy on held-out synthetic images, a classical baseline, speed and memory.

Run from the repository root::

    .venv/bin/python bundles/eye/scripts/benchmark.py --work_dir /tmp/eye_bench

Steps: synthesize a training set (seed 0) and a held-out set (another seed), train with the demo settings of
``train.json`` through the real bundle command, evaluate on the held-out ``test/`` split, predict it with
``inference.json``, compute the classical green-channel baseline (background subtraction + a threshold tuned on the
training images), time full-image inference on one 565x584 image in-process, and record every subprocess's peak RSS.
Results go to ``<work_dir>/benchmark_results.json`` (``common.benchmark``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BUNDLE = Path(__file__).resolve().parent.parent
REPO = BUNDLE.parent.parent
CONFIGS = BUNDLE / "configs"
sys.path.insert(0, str(REPO))
from common.benchmark import config_list, run_bundle, write_results  # noqa: E402

logger = logging.getLogger("eye.benchmark")


def run_step(name: str, args: list[Any], log_dir: Path) -> dict[str, Any]:
    """Run ``python -m monai.bundle <args>`` from the repository root; return its wall time and peak RSS (MiB)."""
    measured = run_bundle(args, log_dir / f"{name}.log")
    logger.info("%s: %.1f s, peak RSS %.0f MiB", name, measured["wall_s"], measured["peak_rss_mib"])
    return measured


def cfg(*names: str) -> str:
    return config_list(BUNDLE, *names)


def baseline_scores(rgb: np.ndarray, fov: np.ndarray, size: int = 25) -> np.ndarray:
    """Classical vessel score: median-filter background of the green channel minus the green channel, relative to
    the background (vessels are darker than their surroundings), 0 outside the FOV."""
    from scipy import ndimage

    green = rgb[..., 1].astype(np.float64)
    green_filled = np.where(fov, green, green[fov].mean())
    background = ndimage.median_filter(green_filled, size=size)
    return np.where(fov, (background - green) / (background + 1.0), 0.0)


def run_baseline(train_dir: Path, test_dir: Path) -> dict[str, Any]:
    """Tune the threshold of :func:`baseline_scores` on the training images (best mean Dice), score the test split."""
    from scripts.data import list_split
    from scripts.metrics import CASE_METRICS, fov_metrics
    from scripts.transforms import read_mask, read_rgb

    def load(split_dir: Path, split: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        out = []
        for case in list_split(split_dir, split):
            fov = read_mask(case["fov"]) > 0
            out.append((baseline_scores(read_rgb(case["image"]), fov), read_mask(case["label"]) > 0, fov))
        return out

    train, test = load(train_dir, "training"), load(test_dir, "test")
    def dice(s: np.ndarray, g: np.ndarray, f: np.ndarray, t: float) -> float:
        p = (s >= t) & f
        return 2.0 * float(np.sum(p & g)) / max(float(p.sum() + (g & f).sum()), 1.0)

    grid = np.linspace(0.0, 0.3, 61)
    mean_dice = [np.mean([dice(s, g, f, t) for s, g, f in train]) for t in grid]
    best = float(grid[int(np.argmax(mean_dice))])
    rows = [fov_metrics(s, g, f, best) for s, g, f in test]
    return {"threshold": best, "train_dice": round(float(max(mean_dice)), 4),
            **{m: round(float(np.mean([r[m] for r in rows if r[m] is not None])), 4) for m in CASE_METRICS}}


def time_inference(image: Path, ckpt: Path, repeats: int = 5) -> dict[str, Any]:
    """Median wall time of full-image inference on ``image`` (preprocessing + sliding window + postprocessing) and of
    the sliding-window network pass alone, in this process."""
    import torch
    from monai.bundle import ConfigParser

    from common.checkpoint import load_network_weights

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["device"] = "$torch.device('cpu')"
    net = load_network_weights(parser.get_parsed_content("network"), ckpt).eval()
    pre, inferer = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer")
    post = parser.get_parsed_content("postprocessing")
    full, network_only = [], []
    with torch.no_grad():
        for i in range(repeats + 1):
            start = time.perf_counter()
            data = pre({"image": str(image), "fov": "", "case": image.stem})
            mid = time.perf_counter()
            logits = inferer(data["image"][None], net)
            net_end = time.perf_counter()
            post({"pred": logits[0], "fov": data["fov"]})
            if i:  # the first run is a warm-up
                full.append(time.perf_counter() - start)
                network_only.append(net_end - mid)
    shape = tuple(data["image"].shape[1:])
    return {"image_hw": list(shape), "threads": torch.get_num_threads(),
            "full_image_s": round(statistics.median(full), 3), "network_s": round(statistics.median(network_only), 3)}


def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.path.insert(0, str(BUNDLE))
    sys.path.insert(0, str(REPO))
    work = Path(args.work_dir).resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    train_dir, test_dir, out = work / "train", work / "heldout", work / "out"
    size = ["--synthetic_image_size", f"[{args.height},{args.width}]"]
    res: dict[str, Any] = {"settings": vars(args)}
    res["synthesize_train"] = run_step("synthesize_train", ["run", "--config_file", cfg("synthesize"), "--dataset_dir",
                                                            train_dir, "--num_cases", args.num_train, "--seed",
                                                            args.train_seed, "--num_test", 1, *size], logs)
    res["synthesize_heldout"] = run_step("synthesize_heldout", ["run", "--config_file", cfg("synthesize"),
                                                                "--dataset_dir", test_dir, "--num_cases", 1,
                                                                "--num_test", args.num_test, "--seed", args.test_seed,
                                                                *size], logs)
    extra = ["--epochs", args.epochs] if args.epochs else []
    res["train"] = run_step("train", ["run", "--config_file", cfg("train"), "--dataset_dir", train_dir,
                                      "--output_dir", out, *extra], logs)
    res["evaluate"] = run_step("evaluate", ["run", "--config_file", cfg("train", "evaluate"), "--dataset_dir",
                                            test_dir, "--output_dir", out], logs)
    res["inference"] = run_step("inference", ["run", "--config_file", cfg("inference"), "--input_dir",
                                              test_dir / "test" / "images", "--output_dir", out], logs)
    res["metrics"] = json.loads((out / "metrics.json").read_text())
    res["baseline"] = run_baseline(train_dir, test_dir)
    res["dice_margin_over_baseline"] = round(res["metrics"]["dice"] - res["baseline"]["dice"], 4)
    image = sorted((test_dir / "test" / "images").glob("*.tif"))[0]
    res["speed"] = time_inference(image, out / "models" / "model.pt", repeats=args.repeats)
    res["peak_rss_mib"] = max(v["peak_rss_mib"] for v in res.values() if isinstance(v, dict) and "peak_rss_mib" in v)
    logger.info("results written to %s", write_results(work, res))
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", default="/tmp/eye_bench", help="folder for data, outputs, logs and the JSON")
    parser.add_argument("--num_train", type=int, default=20, help="synthetic training images (DRIVE has 20)")
    parser.add_argument("--num_test", type=int, default=10, help="held-out synthetic test images")
    parser.add_argument("--train_seed", type=int, default=0, help="seed of the training set")
    parser.add_argument("--test_seed", type=int, default=1, help="seed of the held-out set (must differ)")
    parser.add_argument("--height", type=int, default=584, help="image height (DRIVE: 584)")
    parser.add_argument("--width", type=int, default=565, help="image width (DRIVE: 565)")
    parser.add_argument("--epochs", type=int, default=0, help="training epochs; 0 keeps train.json's default")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the full-image inference")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
