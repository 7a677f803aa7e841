"""GPU check of ``configs/real_data.json``: training speed with AMP, epoch time on the real data set, peak GPU memory.

Needs one CUDA GPU; without one it refuses (exit status 2) and changes nothing. Run from the repository root::

    python benchmarks/gpu_check.py --area all --iterations 20 --work_dir /tmp/gpu_check --output /tmp/gpu_check.json

Per bundle (``--area``, or ``all`` one after another) it writes the real-size phantom of ``benchmarks/real_size.py``
(same sizes, same ``synthesize.json`` ids), then runs the standard command
``python -m monai.bundle run --config_file "['.../train.json','.../real_data.json']"`` for one epoch of
``--iterations`` training iterations (``--train#trainer#epoch_length``; the small phantom set is cycled, as ignite
restarts the loader) with everything else from ``real_data.json`` — AMP on, the recipe's patch/batch size, data
loading with its ``num_workers`` — and one validation batch. Then one whole-case inference with ``inference.json``
on one phantom case (a BraTS case, a DRIVE image, a slide heat-map, a mass crop, an ACDC patient), with the
trained checkpoint and its ``model.json``.

Printed per bundle (and written to ``--output``): iterations/s (from the training log's per-iteration time stamps,
the first iteration — CUDA/cuDNN warm-up — left out; the one-epoch time / iterations when the stamps are missing),
the epoch-time estimate for the real data set (:data:`REAL_EPOCH_ITERATIONS` / iterations per second: training
only, without validation and with the loader as fast as on the phantom), the peak GPU memory of training
(``torch.cuda.max_memory_allocated``, printed by the run's ``finalize``) and the inference wall time (process start
included). CPU runs and tests do not use this script.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_size  # noqa: E402  (the sibling benchmark: phantoms, child runner, log parsing)

# training iterations in one epoch of the real data set under real_data.json (batch size in brackets)
REAL_EPOCH_ITERATIONS: dict[str, tuple[int, str]] = {
    "brain": (1000, "BraTS 2021: 1251 cases, 80 % trained (val_fraction 0.2), 1 crop per iteration"),
    "eye": (8, "DRIVE: 20 training images, 16 trained, 2 images x 256 patches per iteration"),
    "pathology": (2048, "PCam: 262144 training patches, 128 per iteration"),
    "breast": (33, "CBIS-DDSM: 1318 training masses (approximate), 80 % trained, 32 per iteration"),
    "cardiac": (20, "ACDC: 100 training patients, 80 trained, 4 patients x 8 slices per iteration"),
}
PEAK_TAG = "GPU_PEAK_MIB"


def refuse_without_cuda() -> None:
    """Exit with status 2 and a clear last line when no CUDA device is visible."""
    import torch

    if not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA GPU (torch.cuda.is_available() is False, torch "
              f"{torch.__version__}): nothing was run. Use benchmarks/real_size.py for the CPU proof.", file=sys.stderr)
        sys.exit(2)


def iterations_per_second(text: str, iterations: int, epoch_s: float | None) -> float | None:
    """Training iterations per second from the StatsHandler's per-iteration log time stamps, first iteration left out
    (falls back to ``iterations / epoch_s``)."""
    stamps = []
    for line in text.splitlines():
        match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*Iter: (\d+)/\d+ -- train_loss", line)
        if match:
            when = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
            stamps.append((int(match.group(3)), when.timestamp() + int(match.group(2)) / 1000.0))
    if len(stamps) >= 3:
        (first, t0), (last, t1) = stamps[0], stamps[-1]
        if t1 > t0:
            return (last - first) / (t1 - t0)
    return iterations / epoch_s if epoch_s else None


def inference_input(area: str, dataset_dir: Path, folder: Path) -> Path:
    """A folder holding one whole case of the phantom, in the form the bundle's inference reads."""
    folder.mkdir(parents=True, exist_ok=True)
    if area == "brain":
        case = sorted(p for p in dataset_dir.iterdir() if p.is_dir())[0]
        shutil.copytree(case, folder / case.name)
    elif area == "eye":
        shutil.copy(sorted((dataset_dir / "test" / "images").glob("*.tif"))[0], folder)
    elif area == "pathology":
        shutil.copy(sorted(dataset_dir.rglob("*.tif"))[0], folder)
    elif area == "breast":
        crop = sorted(p for p in dataset_dir.rglob("000000.dcm") if p.parent.parent.parent.name.endswith("_1"))[0]
        shutil.copy(crop, folder / "mass_crop.dcm")
    elif area == "cardiac":
        patient = sorted((dataset_dir / "testing").iterdir())[0]
        shutil.copytree(patient, folder / patient.name)
    return folder


def check(area: str, work_dir: Path, iterations: int) -> dict[str, Any]:
    """Synthesize, train ``iterations`` iterations with AMP, infer one case; the numbers of one bundle."""
    dataset_dir, output_dir = work_dir / f"{area}_data", work_dir / f"{area}_out"
    for folder in (dataset_dir, output_dir, work_dir / f"{area}_input", work_dir / f"{area}_pred"):
        shutil.rmtree(folder, ignore_errors=True)
    result: dict[str, Any] = {"area": area, "iterations": iterations}
    synth = real_size.synthesize(area, dataset_dir, work_dir, None)
    result["synthesize_s"] = synth["wall_s"]
    if synth["returncode"] != 0:
        result["error"] = f"synthesize failed, see {synth['log']}"
        return result
    finalize = f"['$print(\"{PEAK_TAG}\", torch.cuda.max_memory_allocated() / 2 ** 20)']"
    command = real_size.train_command(area, dataset_dir, output_dir, {"train#trainer#epoch_length": iterations})
    command = [c for c in command]
    at = command.index("--num_workers")  # keep real_data.json's num_workers on the GPU machine
    del command[at:at + 2]
    step = real_size.run_child(command + ["--finalize", finalize], work_dir / f"{area}_train.log", None)
    text = Path(step["log"]).read_text(encoding="utf-8", errors="replace")
    epoch = real_size.engine_seconds(text, "SupervisedTrainer")
    its = iterations_per_second(text, iterations, epoch[0] if epoch else None)
    peak = re.findall(PEAK_TAG + r" ([\d.]+)", text)
    real_iterations, basis = REAL_EPOCH_ITERATIONS[area]
    result.update({
        "train_returncode": step["returncode"], "train_log": step["log"], "train_wall_s": step["wall_s"],
        "iterations_per_s": None if its is None else round(its, 3),
        "real_epoch_iterations": real_iterations, "real_epoch_basis": basis,
        "real_epoch_estimate_s": None if not its else round(real_iterations / its, 1),
        "peak_gpu_memory_mib": float(peak[-1]) if peak else None,
        "host_peak_rss_mib": step["peak_rss_mib"],
    })
    ckpt = output_dir / "models" / "model.pt"
    if step["returncode"] != 0 or not ckpt.is_file():
        result["error"] = f"training failed, see {step['log']}"
        return result
    source = inference_input(area, dataset_dir, work_dir / f"{area}_input")
    infer = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"bundles/{area}/configs/inference.json",
             "--input_dir", str(source), "--output_dir", str(work_dir / f"{area}_pred"), "--ckpt_path", str(ckpt)]
    step = real_size.run_child(infer, work_dir / f"{area}_inference.log", None)
    result.update({"inference_returncode": step["returncode"], "inference_wall_s": step["wall_s"],
                   "inference_log": step["log"]})
    if step["returncode"] != 0:
        result["error"] = f"inference failed, see {step['log']}"
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--area", default="all", choices=["all", *sorted(real_size.AREAS)])
    parser.add_argument("--iterations", type=int, default=20, help="training iterations to time (>= 3)")
    parser.add_argument("--work_dir", default="/tmp/gpu_check", help="phantoms, outputs and logs")
    parser.add_argument("--output", default=None, help="write the results JSON here too")
    args = parser.parse_args(argv)
    if args.iterations < 3:
        parser.error(f"--iterations must be at least 3 (the first is warm-up), got {args.iterations}")
    refuse_without_cuda()
    import torch

    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    areas = sorted(real_size.AREAS) if args.area == "all" else [args.area]
    header = {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
              "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    results = []
    for area in areas:
        result = {**header, **check(area, work_dir, args.iterations)}
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.output:
        from common.io import write_json

        write_json(args.output, results)
    print(f"{'area':<10} {'it/s':>8} {'real epoch (s)':>15} {'peak GPU (MiB)':>15} {'inference (s)':>14}")
    for r in results:
        print(f"{r['area']:<10} {r.get('iterations_per_s')!s:>8} {r.get('real_epoch_estimate_s')!s:>15} "
              f"{r.get('peak_gpu_memory_mib')!s:>15} {r.get('inference_wall_s')!s:>14}  {r.get('error', '')}")
    return results


if __name__ == "__main__":
    sys.exit(0 if all("error" not in r for r in main()) else 1)
