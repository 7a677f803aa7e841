"""Real-size proof on CPU: one training iteration and one validation pass of ``configs/real_data.json`` per bundle.

Run from the repository root, one bundle at a time (minutes of CPU each; run it alone on the machine)::

    python benchmarks/real_size.py --area brain --work_dir /tmp/real_size --output /tmp/real_size/brain.json

For ``--area`` (brain, eye, pathology, breast, cardiac) it

1. writes a phantom at the real data set's size with the bundle's own ``synthesize.json`` ids (see :data:`AREAS`):
   brain 2 cases at 1 mm, fitted to the BraTS grid 240 x 240 x 155 (centred pad/crop, affine shifted to match);
   eye 3 DRIVE images of 565 x 584; pathology 256 PCam patches of 96 x 96 (the real patch size: PCam's size is its
   patch count, read lazily); breast 48 masses whose cropped-image DICOMs are resampled to
   :data:`BREAST_CROP_SIDE` pixels (a typical CBIS-DDSM mass crop; the phantom draws 15-30 px masses); cardiac
   5 ACDC patients with a 144 x 144 matrix over a 190-230 mm field of view (1.3-1.6 mm in plane, ACDC 1.37-1.68 mm).
   Each set holds at least one full training batch of the recipe (eye 2 images, cardiac 4 patients, breast 32
   masses, pathology 128 patches) besides the validation cases;
2. runs the standard command ``python -m monai.bundle run --config_file "['.../train.json','.../real_data.json']"``
   with ``--epochs 1``, ``--train#trainer#epoch_length 1`` and ``--validate#evaluator#epoch_length 1`` (ignite's
   bound on the iterations of an epoch), ``--num_workers 0`` (no data-loader processes on a 2-core machine) and
   everything else from ``real_data.json``: one training iteration at the real patch/batch size, then the end-of-run
   validation on one case (brain, eye, cardiac) or one batch (pathology, breast) and, where the bundle has one, the
   calibration pass;
3. reports the iteration's seconds (from the trainer's start to the end of its first iteration in the log's time
   stamps, data loading included), the validation pass's seconds (ignite's epoch time of the evaluator), the whole
   command's wall time and its peak RSS (``os.wait4`` of that child: the child and the processes it waited for,
   ``ru_maxrss``), as one JSON object printed last and written to ``--output`` (atomically).

The child runs under an address-space limit (``--memory_limit_gib``, ``RLIMIT_AS``): a recipe that does not fit
fails in its own process with an allocation error (reported as ``"fits": false``) instead of pushing the shared
machine into the kernel's OOM killer. Exit status 0 when the iteration and the validation completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BREAST_CROP_SIDE = 512  # px: a typical CBIS-DDSM mass crop side (masses of ~1-3 cm at 50 um/px; estimate)
BRATS_SHAPE = (240, 240, 155)

# per area: synthesize.json overrides (the real size), extra training overrides, and what one iteration holds
AREAS: dict[str, dict[str, Any]] = {
    "brain": {"synthesize": {"num_cases": 2, "synthetic_spacing": 1.0}, "train": {},
              "real_size": "BraTS 2021 grid 240 x 240 x 155 at 1 mm, 4 modalities"},
    "eye": {"synthesize": {"num_cases": 3, "synthetic_image_size": [584, 565]}, "train": {},
            "real_size": "DRIVE 565 x 584 RGB"},
    "pathology": {"synthesize": {"num_cases": 256, "num_slides": 1, "synthetic_image_size": 1024}, "train": {},
                  "real_size": "PCam 96 x 96 RGB patches"},
    "breast": {"synthesize": {"num_cases": 48}, "train": {},
               "real_size": f"CBIS-DDSM mass crops resampled to {BREAST_CROP_SIDE} x {BREAST_CROP_SIDE} px"},
    "cardiac": {"synthesize": {"num_cases": 5, "num_test_cases": 1, "synthetic_image_size": 144}, "train": {},
                "real_size": "ACDC short axis, 144 x 144 matrix at 1.3-1.6 mm in plane"},
}

ALLOCATION_ERRORS = ("DefaultCPUAllocator: can't allocate memory", "MemoryError", "std::bad_alloc",
                     "Cannot allocate memory", "out of memory")


def config_list(area: str, *names: str) -> str:
    """The ``--config_file`` value merging ``bundles/<area>/configs/<name>.json`` in order."""
    return "[" + ",".join(f"'bundles/{area}/configs/{n}.json'" for n in names) + "]"


def overrides(values: dict[str, Any]) -> list[str]:
    """``--id value`` arguments for MONAI's command line (python-fire parses the values)."""
    args: list[str] = []
    for key, value in values.items():
        args += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    return args


def run_child(command: list[str], log: Path, memory_limit_gib: float | None, env: dict | None = None) -> dict:
    """Run ``command`` from the repository root with its output in ``log``; wall seconds, exit status, peak RSS (MiB).

    The peak RSS is ``ru_maxrss`` of the rusage ``os.wait4`` returns for this child (the child and the descendants it
    waited for), so each step's figure is its own, not the maximum over every earlier step.
    """
    limit = None if not memory_limit_gib else int(memory_limit_gib * 2**30)

    def limit_memory() -> None:  # runs in the child before exec
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", **(env or {})}
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(command, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                preexec_fn=limit_memory)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"command": " ".join(command), "returncode": proc.returncode,
            "wall_s": round(time.perf_counter() - start, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024.0, 1),
            "log": str(log)}


def engine_seconds(text: str, engine: str) -> list[float]:
    """Ignite's epoch times of ``engine`` (``SupervisedTrainer``/``SupervisedEvaluator``) from a bundle log."""
    from common.benchmark import ignite_seconds

    return ignite_seconds(text, engine, "epoch")


def _stamp(line: str) -> float:
    """Seconds of the ``asctime`` (``2026-11-30 11:49:50,462``) that starts a log line."""
    day, clock = line[:23].split(" ")
    when = datetime.datetime.strptime(f"{day} {clock[:8]}", "%Y-%m-%d %H:%M:%S")
    return when.timestamp() + int(clock[9:12]) / 1000.0


def first_iteration_seconds(text: str) -> float | None:
    """Wall seconds from the trainer's start to the end of its first iteration (the StatsHandler's ``Iter: 1/``
    line), data loading included. Ignite's epoch time cannot serve: it includes the epoch-end handlers (validation,
    checkpoints)."""
    lines = text.splitlines()
    starts = r"SupervisedTrainer - INFO - Engine run (resuming|starting)"
    start = next((ln for ln in lines if re.search(starts, ln)), None)
    end = next((ln for ln in lines if re.search(r"Iter: 1/\d+ -- train_loss", ln)), None)
    if start is None or end is None:
        return None
    return round(_stamp(end) - _stamp(start), 2)


def fit_brats_grid(dataset_dir: Path, target: tuple[int, int, int] = BRATS_SHAPE) -> list[tuple[int, ...]]:
    """Centre-pad/crop every NIfTI under ``dataset_dir`` to ``target`` (BraTS 240 x 240 x 155), shifting the affine
    so that every kept voxel keeps its world position; return the original shapes."""
    import nibabel as nib
    import numpy as np

    from common.io import save_nifti

    shapes = []
    for path in sorted(dataset_dir.glob("*/*.nii.gz")):
        img = nib.load(str(path))
        array, affine = np.asanyarray(img.dataobj), img.affine
        shapes.append(tuple(array.shape))
        slices, pads = [], []
        for n, t in zip(array.shape, target):
            start = max(0, (n - t) // 2)
            slices.append(slice(start, start + min(n, t)))
            before = max(0, (t - n) // 2)
            pads.append((before, max(0, t - n - before)))
        shift = np.array([s.start - p[0] for s, p in zip(slices, pads)], dtype=float)
        fitted = affine.copy()
        fitted[:3, 3] = affine[:3, 3] + affine[:3, :3] @ shift
        data = np.pad(array[tuple(slices)], pads)
        save_nifti(data.astype(array.dtype), fitted, path, header=img.header)
    return sorted(set(shapes))


def resample_breast_crops(dataset_dir: Path, side: int = BREAST_CROP_SIDE) -> int:
    """Resample every cropped-image DICOM named in the CBIS-DDSM CSVs so that its longer side is ``side`` pixels
    (bilinear), keeping its bit depth, photometric interpretation and rescale; return the number of files."""
    import csv

    import numpy as np
    import pydicom
    from scipy import ndimage

    count = 0
    for table in sorted(dataset_dir.glob("mass_case_description_*_set.csv")):
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            path = dataset_dir / row["cropped image file path"].strip()
            ds = pydicom.dcmread(str(path))
            array = ds.pixel_array
            zoom = side / max(array.shape)
            resized = ndimage.zoom(array.astype(np.float32), zoom, order=1)
            info = np.iinfo(array.dtype)
            resized = np.clip(np.round(resized), info.min, info.max).astype(array.dtype)
            ds.Rows, ds.Columns = resized.shape
            ds.PixelData = resized.tobytes()
            ds.save_as(str(path))
            count += 1
    return count


def synthesize(area: str, dataset_dir: Path, work_dir: Path, memory_limit_gib: float | None) -> dict:
    """Write the real-size phantom of ``area`` into ``dataset_dir`` with the bundle's ``synthesize.json``."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"bundles/{area}/configs/synthesize.json",
               "--dataset_dir", str(dataset_dir), *overrides(AREAS[area]["synthesize"])]
    step = run_child(command, work_dir / f"{area}_synthesize.log", memory_limit_gib)
    if step["returncode"] != 0:
        return step
    if area == "brain":
        step["phantom_shapes_before_fit"] = [list(s) for s in fit_brats_grid(dataset_dir)]
        step["fitted_to"] = list(BRATS_SHAPE)
    if area == "breast":
        step["crops_resampled_to_side"] = BREAST_CROP_SIDE
        step["crops_resampled"] = resample_breast_crops(dataset_dir)
    return step


def train_command(area: str, dataset_dir: Path, output_dir: Path, extra: dict | None = None) -> list[str]:
    """The standard training command over ``train.json`` + ``real_data.json``, bounded to one iteration per epoch."""
    values = {"epochs": 1, "num_workers": 0, "train#trainer#epoch_length": 1, "validate#evaluator#epoch_length": 1,
              **AREAS[area]["train"], **(extra or {})}
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_list(area, "train", "real_data"),
            "--dataset_dir", str(dataset_dir), "--output_dir", str(output_dir), *overrides(values)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--area", required=True, choices=sorted(AREAS))
    parser.add_argument("--work_dir", default=None, help="folder for the phantom, outputs and logs (default: a "
                        "temporary folder, removed at the end unless --keep)")
    parser.add_argument("--output", default=None, help="write the result JSON here too")
    parser.add_argument("--memory_limit_gib", type=float, default=18.0,
                        help="address-space limit of each child (RLIMIT_AS), 0 for none")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--override", action="append", default=[], metavar="ID=JSON",
                        help="extra training override, e.g. roi_size=[112,112,72] (estimates when the real size "
                             "does not fit); recorded in the result")
    args = parser.parse_args(argv)

    extra = {}
    for item in args.override:
        key, _, value = item.partition("=")
        if not key or not value:
            parser.error(f"--override {item!r}: expected ID=JSON, e.g. roi_size=[112,112,72]")
        extra[key] = json.loads(value)

    temporary = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix=f"real_size_{args.area}_")) if temporary else Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    dataset_dir, output_dir = work_dir / f"{args.area}_data", work_dir / f"{args.area}_out"
    for folder in (dataset_dir, output_dir):
        shutil.rmtree(folder, ignore_errors=True)

    import torch

    result: dict[str, Any] = {
        "area": args.area, "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "real_size": AREAS[args.area]["real_size"], "recipe": f"bundles/{args.area}/configs/real_data.json",
        "overrides_beyond_real_data": extra, "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "memory_limit_gib": args.memory_limit_gib, "load_average_1m_at_start": round(os.getloadavg()[0], 1),
    }
    try:
        result["synthesize"] = synthesize(args.area, dataset_dir, work_dir, args.memory_limit_gib)
        if result["synthesize"]["returncode"] != 0:
            raise RuntimeError(f"synthesize failed, see {result['synthesize']['log']}")
        step = run_child(train_command(args.area, dataset_dir, output_dir, extra), work_dir / f"{args.area}_train.log",
                         args.memory_limit_gib)
        text = Path(step["log"]).read_text(encoding="utf-8", errors="replace")
        train_s, val_s = engine_seconds(text, "SupervisedTrainer"), engine_seconds(text, "SupervisedEvaluator")
        step["seconds_per_iteration"] = first_iteration_seconds(text)
        step["train_epoch_with_end_handlers_s"] = train_s[0] if train_s else None
        step["validation_pass_s"] = val_s[0] if val_s else None
        step["model_written"] = (output_dir / "models" / "model.pt").is_file()
        step["fits"] = not any(e in text for e in ALLOCATION_ERRORS)
        if step["returncode"] != 0:
            step["error_tail"] = text.strip().splitlines()[-1:] if text.strip() else []
        result["train"] = step
        result["completed"] = bool(step["returncode"] == 0 and step["seconds_per_iteration"] is not None
                                   and step["validation_pass_s"] is not None and step["model_written"])
        result["load_average_1m_at_end"] = round(os.getloadavg()[0], 1)
        result["peak_rss_mib_all_children"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    if args.output:
        from common.io import write_json

        write_json(args.output, result)
    print(json.dumps(result, indent=1))
    if not result.get("completed"):
        train = result.get("train", {})
        reason = "does not fit in the memory limit" if train.get("fits") is False else "failed"
        print(f"{args.area}: real-size training iteration {reason}: see {train.get('log', work_dir)}", file=sys.stderr)
    return result


if __name__ == "__main__":
    sys.exit(0 if main().get("completed") else 1)
