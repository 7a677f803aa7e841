"""Benchmark of the breast bundle (issue 6): accuracy on held-out synthetic masses, a size + intensity baseline,
inference speed and peak memory.

Run from the repository root::

    .venv/bin/python bundles/breast/scripts/benchmark.py --work_dir /tmp/breast_bench

It synthesizes a training set (``--num_cases`` masses, ``--seed``) and a held-out set of another seed (its test CSV,
``--num_cases // 2`` masses, is the test set), trains with the demo settings of ``train.json`` and evaluates through
the real bundle commands (subprocesses), fits the logistic-regression baseline on ROI size and mean intensity, times
inference per case in-process and through the inference command, and writes everything to
``<work_dir>/benchmark_results.json`` (``common.benchmark``; peak RSS of each command in MiB).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

BUNDLE = Path(__file__).resolve().parent.parent
REPO = BUNDLE.parent.parent
sys.path.insert(0, str(REPO))

from common.benchmark import (  # noqa: E402
    held_out_options,
    median_ms_per_item,
    synthesize_once,
    train_evaluate_infer,
    write_results,
)

MARKER = "mass_case_description_test_set.csv"  # the last file the synthesizers write


def held_out_sets(args: argparse.Namespace, workflow: str = "") -> tuple[Path, Path, dict[int, float]]:
    """The training set (``--seed``) in ``<work_dir>/train_data`` and the held-out set (``--heldout_seed``) in
    ``<work_dir>/heldout_data``, ``--num_cases`` each, written by the ``synthesize<workflow>`` workflow unless an
    earlier run left them (:func:`common.benchmark.synthesize_once`); this benchmark's and the detector's
    (``workflow`` ``"_detection"``).

    Returns:
        ``(train_dir, heldout_dir, {seed: wall s of the set written now})``.
    """
    work = Path(args.work_dir)
    folders, made = (work / "train_data", work / "heldout_data"), {}
    for folder, seed in zip(folders, (args.seed, args.heldout_seed)):
        seconds = synthesize_once(BUNDLE, folder, MARKER, work / "logs" / f"synthesize{workflow}_{folder.name}.log",
                                  "--num_cases", args.num_cases, "--seed", seed, config=f"synthesize{workflow}")
        if seconds is not None:
            made[seed] = seconds
    return folders[0], folders[1], made


def roi_features(items: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Baseline features per mass: ROI area (pixels) and mean windowed intensity inside the ROI."""
    from scripts.dicom import read_dicom
    from scripts.transforms import crop_box

    features, labels = [], []
    for item in items:
        full, roi = read_dicom(item["full"]), read_dicom(item["roi"]) > 0
        y0, y1, x0, x1 = crop_box(roi, 0.25)
        crop = full[y0:y1, x0:x1]
        low, high = np.percentile(crop, [0.5, 99.5])
        windowed = np.clip((crop - low) / max(high - low, 1e-6), 0, 1)
        features.append([float(roi.sum()), float(windowed[roi[y0:y1, x0:x1]].mean())])
        labels.append(item["label"])
    return np.array(features), np.array(labels)


def baseline_auc(train_dir: Path, test_dir: Path) -> float | None:
    """Logistic regression on (size, mean intensity), fitted on the training CSV, AUC on the held-out test CSV."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from common.classification import roc_auc
    from scripts.data import load_split

    x_train, y_train = roi_features(load_split(train_dir, "train", "roi_mask", check_files=False))
    x_test, y_test = roi_features(load_split(test_dir, "test", "roi_mask", check_files=False))
    model = make_pipeline(StandardScaler(), LogisticRegression(random_state=0)).fit(x_train, y_train)
    scores = model.predict_proba(x_test)[:, 1]
    return roc_auc(y_test, scores)


def time_inference(test_dir: Path, ckpt: Path, threads: int) -> dict:
    """Median ms per case: preprocessing + forward (batch 1), and the network forward alone, with ``threads``."""
    import torch
    from monai.bundle import ConfigParser

    from scripts.data import load_split

    torch.set_num_threads(threads)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    net, pre = parser.get_parsed_content("network_def"), parser.get_parsed_content("preprocessing")
    net.load_state_dict(torch.load(ckpt, map_location="cpu"))
    net.eval()
    items = load_split(test_dir, "test", check_files=False)
    with torch.no_grad():
        end_to_end, network = median_ms_per_item(items, lambda item: pre(dict(item))["image"][None],
                                                 lambda x: torch.softmax(net(x), 1), warmup=5)
    return {"threads": threads, "ms_per_case_end_to_end": end_to_end, "ms_per_case_network": network,
            "cases": len(items)}


def main(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(BUNDLE))
    work = Path(args.work_dir)
    train_dir, test_dir, made = held_out_sets(args)
    result: dict = {"settings": vars(args)}
    if args.seed in made:
        result["synthesize_s"] = made[args.seed]
    result.update(train_evaluate_infer(BUNDLE, work, train_dir, test_dir, test_dir,
                                       train_args=["--epochs", args.epochs] if args.epochs else []))
    result["baseline_auc_size_intensity"] = baseline_auc(train_dir, test_dir)
    result["speed"] = [time_inference(test_dir, work / "out" / "models" / "model.pt", t) for t in (1, 2)]
    result["case_study_hadush_2020"] = {"accuracy": 0.9186, "precision": 0.8765, "sensitivity": 0.9467,
                                        "specificity": 0.8969, "auc": 0.922}
    write_results(work, result)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = held_out_options(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), 400, "masses")
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(main(parse_args()), indent=2))
