"""Every bundle's ``backend`` id: TorchScript and ONNX Runtime inference give the eager outputs (issue 18).

The shared tiny run's ``pred`` folder (``tiny_pipeline``) holds the eager (``--backend torch``) outputs. The same
inference command, with ``--backend torchscript`` or ``--backend onnxruntime`` and another ``--output_dir``, must
write the same files: probabilities within 1e-4 (a PNG of probability x 255 within one grey level, since 1e-4 can
cross a rounding boundary); CSV labels identical, CSV probabilities within 1e-4, measurements from masks (volumes,
EF, area fractions) within 1e-2 of their column's largest magnitude (one tied voxel of a 1-epoch cardiac mask moves
an EF by 0.003 points; the masks they come from are checked voxel by voxel); masks
identical except at most a fraction 1e-4 of their voxels. That allowance is for ties: the shared run's network is
trained for one epoch, so its class probabilities are nearly equal in many voxels, and a rounding difference of
1e-6 (ONNX Runtime's convolutions sum in another order than PyTorch's) flips an argmax there (measured: 1 voxel of
45 056 in one cardiac mask; TorchScript runs PyTorch's kernels and gives identical masks). The ONNX export command
printed in each model card is run as printed (only its paths replaced) from the repository root.
"""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bundle_harness import BUNDLES, REPO, run_monai_bundle

AREAS = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file())
PROB_TOL = 1e-4
MEASURE_TOL = 1e-2
MASK_TIES = 1e-4  # fraction of a mask's voxels allowed to differ (ties of the 1-epoch network, see above)


def read_array(path: Path) -> np.ndarray:
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asarray(nib.load(path).dataobj)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    from PIL import Image

    return np.asarray(Image.open(path))


def is_probability(path: Path) -> bool:
    """Files that hold probabilities (or pictures of them) rather than masks/labels."""
    return any(word in path.name for word in ("_prob", "_heatmap", "_uncertainty"))


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def compare_file(ours: Path, eager: Path) -> str | None:
    """Why ``ours`` differs from the eager run's ``eager`` beyond the tolerances, or None."""
    if ours.suffix == ".csv":
        rows_a, rows_b = (list(csv.DictReader(p.open())) for p in (ours, eager))
        if len(rows_a) != len(rows_b) or (rows_a and rows_a[0].keys() != rows_b[0].keys()):
            return "different rows or columns"
        scale = {key: max([1.0] + [abs(float(r[key])) for r in rows_b if _number(r[key])]) for key in rows_b[0]}
        for a, b in zip(rows_a, rows_b):
            for key in a:
                if not (_number(a[key]) and _number(b[key])):
                    same = a[key] == b[key]
                elif key == "label":
                    same = float(a[key]) == float(b[key])
                elif "prob" in key or key.startswith("p_"):
                    same = abs(float(a[key]) - float(b[key])) <= PROB_TOL
                else:  # measured from masks (volumes, fractions, EF): a tied voxel moves them a little
                    same = abs(float(a[key]) - float(b[key])) <= MEASURE_TOL * scale[key]
                if not same:
                    return f"{key}: {a[key]!r} != {b[key]!r}"
        return None
    if ours.suffix.lower() in (".json", ".log", ".txt"):
        return None
    a, b = read_array(ours), read_array(eager)
    if a.shape != b.shape:
        return f"shape {a.shape} != {b.shape}"
    if np.issubdtype(b.dtype, np.floating):
        diff = float(np.abs(a.astype(np.float64) - b).max()) if b.size else 0.0
        return None if diff <= PROB_TOL else f"max abs difference {diff:.3g}"
    diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
    if is_probability(ours):
        return None if diff.max(initial=0) <= 1 else f"probability picture differs by {diff.max()} grey levels"
    changed = int((diff > 0).sum())
    return None if changed <= MASK_TIES * b.size else f"{changed} of {b.size} mask voxels differ"


def backend_command(args: list[str], output_dir: Path, backend: str) -> list[str]:
    """The shared run's inference command with another ``--output_dir`` and ``--backend``."""
    args = [str(a) for a in args]
    i = args.index("--output_dir")
    return [*args[:i + 1], str(output_dir), *args[i + 2:], "--backend", backend]


# ONNX Runtime (the CPU deployment path) for every bundle; the TorchScript backend (the same `common.backends` code,
# the export itself is checked per bundle by the conformance test) for one 3D and one 2D bundle in CI, all with -m slow.
# TorchScript runs PyTorch's own kernels (identical outputs wherever measured) and the conformance test checks every
# bundle's TorchScript export against eager: its end-to-end runs are opt-in (-m slow). ONNX Runtime's kernels differ,
# so every bundle's ONNX Runtime inference runs in CI.
BACKEND_CASES = [pytest.param(area, backend, marks=[pytest.mark.slow] if backend == "torchscript" else [])
                 for backend in ("torchscript", "onnxruntime") for area in AREAS]
# The printed export command is one CLI (common.backends export) whatever the bundle: CI runs it for a 3-D
# segmentation network and a 2-D classifier; the other bundles' printed commands run under -m slow (their
# exports are exercised in CI by the onnxruntime backend above, and the printed lines are checked statically).
EXPORT_IN_CI = ("brain", "pathology")


@pytest.mark.parametrize(("area", "backend"), BACKEND_CASES)
def test_backend_gives_the_eager_outputs(area, backend, tiny_pipeline, tmp_path):
    run = tiny_pipeline(area)
    eager_dir, out = run["pred"], tmp_path / backend
    command = backend_command(run["logs"]["inference"].args, out, backend)
    run_monai_bundle(command[3:], cwd=run["copy"], prefix=command[:3])
    eager_files = {p.relative_to(eager_dir) for p in eager_dir.rglob("*") if p.is_file()}
    ours = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    compared = sorted(f for f in eager_files if f.suffix.lower() in (".csv", ".gz", ".nii", ".png", ".tif", ".tiff"))
    assert compared, f"{area}: the eager run wrote nothing to compare in {eager_dir}"
    assert set(compared) <= ours, f"{area} {backend}: missing {sorted(set(compared) - ours)}"
    problems = {str(f): why for f in compared if (why := compare_file(out / f, eager_dir / f))}
    assert not problems, f"{area} {backend}: outputs differ from the eager run: {problems}"


def export_command(area: str) -> str:
    """The ONNX export command the model card prints for the repository root."""
    text = (BUNDLES / area / "docs" / "README.md").read_text()
    found = [line.strip() for line in text.splitlines()
             if line.strip().startswith("python -m common.backends export") and f"bundles/{area}/configs/" in line]
    assert found, f"{area}: the model card prints no `python -m common.backends export` command for the repo root"
    return found[0]


@pytest.mark.parametrize("area", [pytest.param(a, marks=[] if a in EXPORT_IN_CI else [pytest.mark.slow])
                                  for a in AREAS])
def test_printed_onnx_export_command_works(area, tiny_pipeline, tmp_path):
    """Run as printed (paths replaced) from the repository root; the file runs in ONNX Runtime at two batch sizes
    with the eager network's output (the command itself checks the export against eager before writing)."""
    import onnxruntime as ort
    import torch

    run = tiny_pipeline(area)
    words = shlex.split(export_command(area))
    ckpt, onnx_file = run["out"] / "models" / "model.pt", tmp_path / "model.onnx"
    words[words.index("--ckpt_path") + 1] = str(ckpt)
    words[words.index("--filepath") + 1] = str(onnx_file)
    proc = subprocess.run([sys.executable, *words[1:]], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"max abs difference to eager [\d.e+-]+", proc.stdout), proc.stdout
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    declared = session.get_inputs()[0].shape
    assert isinstance(declared[0], str), f"{area}: the batch axis is not dynamic: {declared}"
    shape = [1 if isinstance(s, str) else s for s in declared]
    shape[2:] = [96 if isinstance(s, str) else s for s in declared[2:]]
    for batch in (1, 3):
        x = torch.rand(batch, *shape[1:], generator=torch.Generator().manual_seed(batch))
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert out.shape[0] == batch and np.isfinite(out).all()
