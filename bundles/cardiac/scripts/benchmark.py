"""Benchmark of the cardiac bundle (issue: accuracy, non-triviality, speed), run from the repository root.

    .venv/bin/python bundles/cardiac/scripts/benchmark.py --work_dir /tmp/cardiac_bench

Synthesizes a training set (seed 0) and a held-out set (seed 1), trains with the demo settings of train.json through
the real bundle command, evaluates on the held-out patients, runs the classical baseline (thresholding + connected
components around the image centre) on the same patients, times inference (whole command and per patient in
process) and the network alone against the Model Zoo peer's input size, and records each command's peak RSS (MiB).
Results go to ``<work_dir>/benchmark_results.json`` (``common.benchmark``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BUNDLE = REPO / "bundles" / "cardiac"
CONFIGS = BUNDLE / "configs"
sys.path.insert(0, str(REPO))

from common.benchmark import run_workflow, train_evaluate_infer, write_results  # noqa: E402


def baseline_metrics(test_dir: Path) -> dict:
    """mean_dice and ef_mae of the classical baseline on ``test_dir``."""
    sys.path.insert(0, str(BUNDLE))
    import nibabel as nib
    import numpy as np

    from common.evaluation import summarise
    from common.geometry import load, voxel_sizes
    from scripts import baseline, data, metrics

    rows = []
    for patient in data.list_patients(test_dir):
        info = data.parse_info_cfg(patient / "Info.cfg")
        preds, gts = {}, {}
        for phase in data.PHASES:
            image = load(data.frame_path(patient, info[phase]))  # common.geometry's rule, as inference uses
            spacing = voxel_sizes(image)
            preds[phase] = baseline.segment_volume(np.asarray(image.dataobj, dtype=np.float32), spacing)
            gts[phase] = np.asarray(nib.load(data.frame_path(patient, info[phase], gt=True)).dataobj).astype(np.uint8)
        rows.append(metrics.patient_row(patient.name, preds, gts, spacing))
    summary = summarise(rows, "mean_dice", ["mean_dice"], {"ef_mae": metrics.ef_mae})
    return {k: summary[k] for k in ("mean_dice", "mean_dice_ci95", "ef_mae", "ef_mae_ci95", "num_cases")}


def network_timing(threads: int, test_dir: Path, ckpt: Path) -> dict:
    """In-process timings: per patient (ED + ES through inference.json's evaluator: load, resample, network, invert,
    write) and the network alone on 10-slice volumes."""
    import tempfile

    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    torch.set_num_threads(threads)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    with tempfile.TemporaryDirectory() as out:
        parser.update({"device": "$torch.device('cpu')", "input_dir": str(test_dir), "output_dir": out,
                       "ckpt_path": str(ckpt)})
        evaluator = parser.get_parsed_content("evaluator")  # loads ckpt into the network
        net = parser.get_parsed_content("network")
        stamps: list[float] = []
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: stamps.append(time.perf_counter()))
        start = time.perf_counter()
        evaluator.run()
    ends = stamps[1::2]  # one patient = its ED and ES iterations
    per_patient = [end - begin for begin, end in zip([start] + ends[:-1], ends)]
    result = {"s_per_patient_in_process_median": sorted(per_patient)[len(per_patient) // 2]}
    roi = parser.get_parsed_content("roi_size")
    for size in (list(roi), [256, 256]):
        x = torch.rand(10, 1, *size)
        with torch.no_grad():
            net(x)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - start)
        result[f"ms_network_10_slices_{size[0]}x{size[1]}"] = 1000 * sorted(times)[2]
    result["network_params_M"] = sum(p.numel() for p in net.parameters()) / 1e6
    return result


def main(args: argparse.Namespace) -> dict:
    work = Path(args.work_dir)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(args.threads)}
    train_dir, test_root, out = work / "train", work / "heldout", work / "out"
    res: dict = {"threads": args.threads, "num_train": args.num_train, "num_test": args.num_test}
    logs = work / "logs"
    res["synthesize_s"] = run_workflow(BUNDLE, "synthesize", logs / "synthesize_train.log", "--dataset_dir",
                                       train_dir, "--num_cases", args.num_train, "--num_test_cases", 1, "--seed", 0,
                                       env=env)["wall_s"]
    run_workflow(BUNDLE, "synthesize", logs / "synthesize_heldout.log", "--dataset_dir", test_root, "--num_cases", 1,
                 "--num_test_cases", args.num_test, "--seed", 1, env=env)
    # evaluate reads <dataset_dir>/testing: the held-out patients of the seed-1 set
    res.update(train_evaluate_infer(BUNDLE, work, train_dir, test_root, test_root / "testing",
                                    train_args=["--epochs", args.epochs] if args.epochs else [], env=env))
    res["inference_s_per_patient_whole_command"] = res["inference_s"] / args.num_test
    res["baseline"] = baseline_metrics(test_root / "testing")
    res.update(network_timing(args.threads, test_root / "testing", out / "models" / "model.pt"))
    res["peer_ms_per_10_slice_volume_256"] = 162.0
    write_results(work, res)
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work_dir", default="/tmp/cardiac_bench", help="scratch folder for data, models, outputs")
    p.add_argument("--num_train", type=int, default=30, help="training patients (seed 0)")
    p.add_argument("--num_test", type=int, default=10, help="held-out patients (seed 1)")
    p.add_argument("--epochs", type=int, default=0, help="override train.json's epochs (0: demo default)")
    p.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads of every process")
    print(json.dumps(main(p.parse_args()), indent=2))
