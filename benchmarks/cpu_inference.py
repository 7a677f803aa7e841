"""CPU inference at equal network size: the brain network of the Model Zoo peer, lever by lever, in one sweep.

Run from the repository root (minutes of CPU; run it alone on the machine)::

    python benchmarks/cpu_inference.py --work_dir /tmp/cpu_bench --output /tmp/cpu_bench/results.json

The network is the peer ``brats_mri_segmentation``'s (SegResNet, init_filters 16, blocks_down 1-2-2-4, blocks_up
1-1-1, 4.70 M parameters) with one set of seeded weights for every configuration; the input is one phantom case of
the BraTS size (4 x 240 x 240 x 155 at 1 mm, ``bundles/brain/scripts/benchmark.py``), z-scored on its non-zero voxels
per channel as both pipelines do. Each configuration runs in its own process (peak RSS is per process; the glibc
tunables act at process start): ``--warmup`` untimed runs, then ``--repeats`` timed runs of the inferer alone (the
part the levers change; loading, resampling and writing are the same for every configuration), median reported.
Configurations:

- ``peer``: the peer's inferer, one 240 x 240 x 160 window (``SlidingWindowInferer``, overlap 0.5), ``no_grad``;
- one lever at a time on top of ``peer``: ``inference_mode``, channels-last-3d, the glibc allocator through
  ``GLIBC_TUNABLES`` (``mmap_max=0``, ``trim_threshold`` 64 GiB: freed blocks stay mapped, no page faults),
  the same through ``mallopt`` at start-up (``ctypes``), ONNX Runtime (``common.backends``), sliding-window patches
  (128^3, overlap 0.25, batch 2), and cropping to the foreground (the brain bundle's ``CropForegroundd``) with the
  crop padded to a multiple of 16 and run as one window;
- ``ours``: the kept levers together.

Every configuration's masks (sigmoid > 0.5 per region TC, WT, ET) are compared with the peer's by Dice; with
seeded (untrained) weights the masks are arbitrary but deterministic, so a lever that preserves the computation gives
Dice 1.0, and one that changes what the network sees (the crop: GroupNorm statistics over another extent, zero
padding at the crop border) shows by how much.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"

#: name -> settings; every unnamed setting is the peer's
CONFIGS: dict[str, dict] = {
    "peer": {},
    "inference_mode": {"inference_mode": True},
    "channels_last_3d": {"channels_last": True},
    "glibc_tunables_env": {"env": {"GLIBC_TUNABLES": TUNABLES}},
    "mallopt_ctypes": {"mallopt": True},
    "onnxruntime": {"backend": "onnxruntime"},
    "sliding_128_overlap_0.25": {"roi": [128, 128, 128], "overlap": 0.25, "sw_batch": 2},
    "crop_foreground": {"crop": True},
    "ours": {"crop": True, "mallopt": True, "inference_mode": True},
    "ours_onnxruntime": {"crop": True, "mallopt": True, "backend": "onnxruntime"},
}


def network():
    import torch
    from monai.networks.nets import SegResNet

    torch.manual_seed(0)
    return SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16, in_channels=4, out_channels=3,
                     dropout_prob=0.2).eval()


def mallopt_no_trim() -> bool:
    """glibc ``mallopt``: no mmap for large blocks and no trimming, so freed memory is reused without page faults."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**36))


def worker(settings: dict, work: Path, name: str, repeats: int, warmup: int = 1) -> dict:
    if settings.get("mallopt"):
        mallopt_no_trim()
    import torch
    from monai.inferers import SlidingWindowInferer

    from common.backends import with_backend

    volume = torch.from_numpy(np.load(work / "input.npy"))[None]
    net = network()
    if settings.get("channels_last"):
        net = net.to(memory_format=torch.channels_last_3d)
    net = with_backend(net, settings.get("backend", "torch"))
    box = None
    if settings.get("crop"):
        nonzero = np.argwhere(np.asarray(volume[0]).any(axis=0))
        low, high = nonzero.min(axis=0), nonzero.max(axis=0) + 1
        box = [slice(int(a), int(b)) for a, b in zip(low, high)]
        cropped = volume[(slice(None), slice(None), *box)]
        pad = [(-s) % 16 for s in cropped.shape[2:]]
        x = torch.nn.functional.pad(cropped, [v for p in reversed(pad) for v in (0, p)])
        inferer = SlidingWindowInferer(roi_size=list(x.shape[2:]), sw_batch_size=1, overlap=0.0)
    else:
        x = volume
        inferer = SlidingWindowInferer(roi_size=settings.get("roi", [240, 240, 160]),
                                       sw_batch_size=settings.get("sw_batch", 1), overlap=settings.get("overlap", 0.5))
    if settings.get("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last_3d)
    grad_off = torch.inference_mode if settings.get("inference_mode") else torch.no_grad
    times = []
    for i in range(repeats + warmup):
        start = time.perf_counter()
        with grad_off():
            out = inferer(x, net)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    masks = np.zeros((3, *volume.shape[2:]), bool)
    pred = np.asarray(torch.as_tensor(out)[0].float() > 0)  # sigmoid > 0.5
    if box is not None:
        masks[(slice(None), *box)] = pred[(slice(None), *(slice(0, b.stop - b.start) for b in box))]
    else:
        masks = pred[(slice(None), *(slice(0, s) for s in volume.shape[2:]))]
    np.save(work / f"masks_{name}.npy", np.packbits(masks))
    return {"name": name, "settings": settings, "median_s": float(np.median(times)), "runs_s": times,
            "input_shape": list(x.shape), "voxels": int(np.prod(x.shape[2:])), "torch_threads": torch.get_num_threads(),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def prepare(work: Path) -> None:
    """The BraTS-size phantom case, z-scored per channel on its non-zero voxels, as ``input.npy`` (4 x 240 x 240 x
    155 float32)."""
    import nibabel as nib

    sys.path.insert(0, str(REPO / "bundles" / "brain"))
    from scripts.benchmark import write_brats_size_case  # noqa: E402
    from scripts.phantom import SEQUENCES  # noqa: E402

    case = write_brats_size_case(work / "case")
    channels = []
    for seq in SEQUENCES:
        data = np.asarray(nib.load(case / f"{case.name}_{seq}.nii.gz").dataobj, np.float32)
        mask = data != 0
        out = np.zeros_like(data)
        out[mask] = (data[mask] - data[mask].mean()) / (data[mask].std() + 1e-8)
        channels.append(out)
    np.save(work / "input.npy", np.stack(channels))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def cpu_info() -> dict:
    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "")
    return {"cpu_model": model or platform.processor(), "logical_cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "bf16_hardware": {flag: flag in flags for flag in ("avx512_bf16", "amx_bf16")},
            "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--output", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (0: the first run is timed too)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    if args.worker:
        result = worker(CONFIGS[args.worker], work, args.worker, args.repeats, args.warmup)
        print("RESULT " + json.dumps(result))
        return result
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "input.npy").is_file():
        prepare(work)
    results = {"machine": cpu_info(), "repeats": args.repeats, "warmup": args.warmup, "configs": {}}
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        env = {**os.environ, "PYTHONPATH": str(REPO), **CONFIGS[name].get("env", {})}
        proc = subprocess.run([sys.executable, __file__, "--work_dir", str(work), "--repeats", str(args.repeats),
                               "--warmup", str(args.warmup), "--worker", name],
                              capture_output=True, text=True, env=env, cwd=REPO)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            results["configs"][name] = {"error": proc.stderr[-2000:]}
            continue
        results["configs"][name] = json.loads(line[-1][len("RESULT "):])
        print(name, results["configs"][name]["median_s"], flush=True)
        (work / "partial.json").write_text(json.dumps(results, indent=2) + "\n")  # a long sweep keeps what it did
    peer = results["configs"].get("peer", {})
    shape = (3, *np.load(work / "input.npy", mmap_mode="r").shape[1:])
    if "median_s" in peer:
        peer_masks = np.unpackbits(np.load(work / "masks_peer.npy"))[: np.prod(shape)].reshape(shape).astype(bool)
        for name, r in results["configs"].items():
            if "median_s" not in r:
                continue
            r["ratio_to_peer"] = r["median_s"] / peer["median_s"]
            r["rss_ratio_to_peer"] = r["peak_rss_gib"] / peer["peak_rss_gib"]
            masks = np.unpackbits(np.load(work / f"masks_{name}.npy"))[: np.prod(shape)].reshape(shape).astype(bool)
            r["dice_vs_peer"] = {k: dice(masks[i], peer_masks[i]) for i, k in enumerate(("tc", "wt", "et"))}
    output = Path(args.output) if args.output else work / "results.json"
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
