"""CPU inference at equal network size: the brain network of the Model Zoo peer, lever by lever, in one sweep.

Run from the repository root (minutes of CPU; run it alone on the machine)::

    python benchmarks/cpu_inference.py --work_dir /tmp/cpu_bench --output /tmp/cpu_bench/results.json

The network is the peer ``brats_mri_segmentation``'s (SegResNet, init_filters 16, blocks_down 1-2-2-4, blocks_up
1-1-1, 4.70 M parameters) with one set of weights for every configuration (seeded, or trained briefly at 1 mm with
``--train_steps`` on 64^3 crops, :func:`train`); the input is one phantom case of the BraTS size (4 x 240 x 240 x 155
at 1 mm, ``bundles/brain/scripts/benchmark.py``), z-scored on its non-zero voxels per channel as both pipelines do.
Each configuration runs in its own process (peak RSS is per process; the glibc tunables act at process start):
``--warmup`` untimed runs, then ``--repeats`` timed runs of the inferer alone (the part the levers change; loading,
resampling and writing are the same for every configuration), median reported.

Configurations:

- ``peer``: the peer's inferer, one 240 x 240 x 160 window (``SlidingWindowInferer``, overlap 0.5), ``no_grad``;
- one lever at a time on top of ``peer``: ``inference_mode``, channels-last-3d, the glibc allocator through
  ``GLIBC_TUNABLES`` (``mmap_max=0``, ``trim_threshold`` 64 GiB: freed blocks stay mapped, no page faults),
  the same through ``mallopt`` at start-up (``ctypes``), ONNX Runtime (``common.backends``), sliding-window patches
  (128^3, overlap 0.25, batch 2), and cropping to the foreground (the brain bundle's ``CropForegroundd``) with the
  crop padded to a multiple of 16 and run as one window;
- the allocator libraries of the distribution (jemalloc, tcmalloc-minimal through ``LD_PRELOAD``, :func:`preload`),
  alone, with their settings (jemalloc as PyTorch's tuning guide sets it, tcmalloc's aggressive decommit), with
  ``inference_mode`` + channels-last-3d, with ``inference_mode`` + ``torch.compile`` (tcmalloc), and with the crop +
  channels-last-3d;
- ``torch.compile`` alone and beside the allocator, and the crop with channels-last-3d or ``torch.compile``;
- ``peer_profile`` / ``crop_profile``: one more run under ``torch.profiler`` for the share of time per operator family;
- ``ours``: the kept levers together.

Besides the masks' Dice, each configuration's logits are compared with the peer's (largest difference, share of
decided voxels that flip) where both predicted.

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
#: jemalloc as PyTorch's CPU performance tuning guide sets it: freed pages kept (no decay), large blocks in arenas
JEMALLOC_TUNED = "oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"

#: name -> settings; every unnamed setting is the peer's
CONFIGS: dict[str, dict] = {
    "peer": {},
    "inference_mode": {"inference_mode": True},
    "channels_last_3d": {"channels_last": True},
    "glibc_tunables_env": {"env": {"GLIBC_TUNABLES": TUNABLES}},
    "mallopt_ctypes": {"mallopt": True},
    "onnxruntime": {"backend": "onnxruntime"},
    "sliding_128_overlap_0.25": {"roi": [128, 128, 128], "overlap": 0.25, "sw_batch": 2},
    "torch_compile": {"compile": True},
    "exact_levers": {"mallopt": True, "inference_mode": True, "channels_last": True},
    "exact_levers_compile": {"mallopt": True, "inference_mode": True, "compile": True},
    "exact_levers_env": {"env": {"GLIBC_TUNABLES": TUNABLES}, "inference_mode": True, "channels_last": True},
    "crop_foreground": {"crop": True},
    "crop_channels_last_3d": {"crop": True, "channels_last": True},
    "crop_torch_compile": {"crop": True, "compile": True},
    "crop_profile": {"crop": True, "profile": True},
    "peer_profile": {"profile": True},
    "jemalloc": {"preload": "jemalloc"},
    "tcmalloc": {"preload": "tcmalloc_minimal"},
    "jemalloc_tuned": {"preload": "jemalloc", "env": {"MALLOC_CONF": JEMALLOC_TUNED}},
    "tcmalloc_aggressive_decommit": {"preload": "tcmalloc_minimal", "env": {"TCMALLOC_AGGRESSIVE_DECOMMIT": "true"}},
    "tcmalloc_compile": {"preload": "tcmalloc_minimal", "inference_mode": True, "compile": True},
    "jemalloc_exact_levers": {"preload": "jemalloc", "inference_mode": True, "channels_last": True},
    "tcmalloc_exact_levers": {"preload": "tcmalloc_minimal", "inference_mode": True, "channels_last": True},
    "crop_channels_last_3d_jemalloc": {"crop": True, "channels_last": True, "preload": "jemalloc"},
    "crop_channels_last_3d_tcmalloc": {"crop": True, "channels_last": True, "preload": "tcmalloc_minimal"},
    "ours": {"crop": True, "mallopt": True, "inference_mode": True, "channels_last": True},
    "ours_onnxruntime": {"crop": True, "mallopt": True, "backend": "onnxruntime"},
}


def preload(library: str) -> dict:
    """``LD_PRELOAD`` of an allocator library from the distribution's packages (Debian: ``apt-get install
    libjemalloc2 libtcmalloc-minimal4``), found the way the dynamic linker finds it (``ctypes.util.find_library``);
    empty when it is not installed (the configuration then reports that instead of a time)."""
    import ctypes.util

    found = ctypes.util.find_library(library)
    return {"LD_PRELOAD": found} if found else {}


def loaded_allocator() -> str:
    """The allocator library mapped into this process (``/proc/self/maps``), or ``glibc``."""
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").is_file() else ""
    return next((name for name in ("jemalloc", "tcmalloc") if name in maps), "glibc")


def network(weights: Path | None = None):
    """The peer's SegResNet, seeded; with ``weights`` (a state dict from :func:`train`) loaded on CPU."""
    import torch
    from monai.networks.nets import SegResNet

    torch.manual_seed(0)
    net = SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16, in_channels=4, out_channels=3,
                    dropout_prob=0.2)
    if weights is not None:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.eval()


def zscore(data: np.ndarray) -> np.ndarray:
    """Per-channel z-score on the non-zero voxels: MONAI's ``NormalizeIntensity(nonzero=True, channel_wise=True)``,
    as both pipelines normalise (float32, CHWD)."""
    from monai.transforms import NormalizeIntensity

    return np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True, dtype=np.float32)(data), np.float32)


def train(work: Path, steps: int, patch: int = 64, cases: int = 3, lr: float = 2e-3) -> dict:
    """Train the peer's network briefly at 1 mm so the equality check runs on weights with decided logits.

    Seeded weights leave most voxels at near-zero logits, where any change of the computation (another GroupNorm
    extent) flips the mask; a trained network's background and tumour logits are far from 0, as in real use. Phantom
    cases of another seed than the timed case (seed 11, indices ``0..cases-1``, 1 mm), ``patch``^3 crops, two of three
    centred on tumour, Dice + BCE on the BraTS regions (TC, WT, ET), Adam. Writes ``weights.pt`` (CPU tensors) and
    returns the loss curve and the time taken.
    """
    import torch
    from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

    from common.losses import DiceCELoss

    sys.path.insert(0, str(REPO / "bundles" / "brain"))
    from scripts.phantom import SEQUENCES, make_case  # noqa: E402

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    to_regions = ConvertToMultiChannelBasedOnBratsClasses()
    data = []
    for index in range(cases):
        images, label, _ = make_case(11, index, spacing=1.0)
        data.append((zscore(np.stack([images[s] for s in SEQUENCES])),
                     np.asarray(to_regions(label), np.float32)))
    torch.manual_seed(0)
    net = network().train()
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = DiceCELoss(sigmoid=True)
    losses = []
    for step in range(steps):
        image, regions = data[step % cases]
        shape = np.array(image.shape[1:])
        if step % 3 < 2:  # tumour-centred
            centre = np.argwhere(regions[1] > 0)[rng.integers(int((regions[1] > 0).sum()))]
        else:
            centre = np.array([rng.integers(patch // 2, n - patch // 2 + 1) for n in shape])
        low = np.clip(centre - patch // 2, 0, shape - patch)
        box = tuple(slice(int(a), int(a) + patch) for a in low)
        x = torch.from_numpy(image[(slice(None), *box)].copy())[None]
        y = torch.from_numpy(regions[(slice(None), *box)].copy())[None]
        loss = loss_fn(net(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            print(f"train step {step}: loss {np.mean(losses[-25:]):.3f}", flush=True)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, work / "weights.pt")
    return {"steps": steps, "patch": patch, "cases": cases, "lr": lr, "seconds": time.perf_counter() - start,
            "loss_first_25": float(np.mean(losses[:25])), "loss_last_25": float(np.mean(losses[-25:]))}


def mallopt_no_trim() -> bool:
    """glibc ``mallopt``: no mmap for large blocks and no trimming, so freed memory is reused without page faults."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**36))


def worker(settings: dict, work: Path, name: str, repeats: int, warmup: int = 1) -> dict:
    if settings.get("preload") and loaded_allocator() == "glibc":
        raise RuntimeError(f"{name}: LD_PRELOAD of lib{settings['preload']} did not load it")
    if settings.get("mallopt"):
        mallopt_no_trim()
    import torch
    from monai.inferers import SlidingWindowInferer

    from common.backends import with_backend

    volume = torch.from_numpy(np.load(work / "input.npy"))[None]
    weights = work / "weights.pt"
    net = network(weights if weights.is_file() else None)
    if settings.get("channels_last"):
        net = net.to(memory_format=torch.channels_last_3d)
    net = with_backend(net, settings.get("backend", "torch"))
    if settings.get("compile"):
        net = torch.compile(net, dynamic=False)
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
    times, warmup_times = [], []
    for i in range(repeats + warmup):
        start = time.perf_counter()
        with grad_off():
            out = inferer(x, net)
        (times if i >= warmup else warmup_times).append(time.perf_counter() - start)
    profile = time_split(inferer, x, net, grad_off) if settings.get("profile") else None
    logits = np.full((3, *volume.shape[2:]), np.nan, np.float32)  # outside a crop: not predicted
    out = np.asarray(torch.as_tensor(out)[0].float())
    if box is not None:
        logits[(slice(None), *box)] = out[(slice(None), *(slice(0, b.stop - b.start) for b in box))]
    else:
        logits = out[(slice(None), *(slice(0, s) for s in volume.shape[2:]))]
    np.save(work / f"logits_{name}.npy", logits)
    np.save(work / f"masks_{name}.npy", np.packbits(logits > 0))  # sigmoid > 0.5; outside a crop: background
    return {"name": name, "settings": settings, "median_s": float(np.median(times)), "runs_s": times,
            "warmup_s": warmup_times,  # torch.compile compiles here
            "input_shape": list(x.shape), "voxels": int(np.prod(x.shape[2:])), "torch_threads": torch.get_num_threads(),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "allocator": loaded_allocator(),
            **({"time_split": profile} if profile else {})}


#: operator-name fragments -> the share they are reported under (torch.profiler's CPU self time)
SPLIT = {"convolution": ("conv", "mkldnn_convolution"), "group_norm": ("group_norm", "native_group_norm"),
         "activation": ("relu", "sigmoid"), "upsample/add/copy": ("upsample", "add", "copy_", "cat", "pad"),
         "memory": ("empty", "zeros", "fill_", "resize_")}


def time_split(inferer, x, net, grad_off) -> dict:
    """One more run under ``torch.profiler``: the share of CPU self time per operator family (:data:`SPLIT`; the
    rest as ``other``), for the note on what limits the time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof, grad_off():
        inferer(x, net)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        key = next((k for k, parts in SPLIT.items() if any(p in event.key for p in parts)), "other")
        totals[key] = totals.get(key, 0.0) + event.self_cpu_time_total
    total = sum(totals.values()) or 1.0
    return {k: v / total for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def prepare(work: Path) -> None:
    """The BraTS-size phantom case, z-scored per channel on its non-zero voxels, as ``input.npy`` (4 x 240 x 240 x
    155 float32)."""
    import nibabel as nib

    sys.path.insert(0, str(REPO / "bundles" / "brain"))
    from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

    from scripts.benchmark import write_brats_size_case  # noqa: E402
    from scripts.phantom import SEQUENCES  # noqa: E402

    case = write_brats_size_case(work / "case")
    images = np.stack([np.asarray(nib.load(case / f"{case.name}_{seq}.nii.gz").dataobj, np.float32)
                       for seq in SEQUENCES])
    np.save(work / "input.npy", zscore(images))
    label = np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj)
    np.save(work / "label_regions.npy", np.asarray(ConvertToMultiChannelBasedOnBratsClasses()(label), bool))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def logit_agreement(work: Path, name: str) -> dict:
    """How far a configuration's logits are from the peer's where both predicted (a crop predicts inside its box
    only): the largest absolute difference, and the share of voxels whose mask flips although the peer's logit is
    at least 0.1 from 0 (a flip of a near-zero logit is rounding; a flip of a decided one is a different answer)."""
    peer_file, own_file = work / "logits_peer.npy", work / f"logits_{name}.npy"
    if not (peer_file.is_file() and own_file.is_file()):
        return {}
    peer, own = np.load(peer_file, mmap_mode="r"), np.load(own_file, mmap_mode="r")
    both = np.isfinite(own)
    diff = np.abs(own[both] - peer[both])
    decided = np.abs(peer[both]) >= 0.1
    flipped = (own[both] > 0) != (peer[both] > 0)
    return {"max_abs_logit_diff": float(diff.max()) if diff.size else 0.0,
            "decided_voxels_flipped": float((flipped & decided).sum() / max(int(decided.sum()), 1))}


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
    parser.add_argument("--train_steps", type=int, default=0,
                        help="train the network this many steps first (0: seeded, untrained weights), see train()")
    parser.add_argument("--train_patch", type=int, default=64)
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
    if args.train_steps and not (work / "weights.pt").is_file():
        results["training"] = train(work, args.train_steps, args.train_patch)
        (work / "training.json").write_text(json.dumps(results["training"], indent=2) + "\n")
    elif (work / "training.json").is_file():
        results["training"] = json.loads((work / "training.json").read_text())
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        env = {**os.environ, "PYTHONPATH": str(REPO), **CONFIGS[name].get("env", {})}
        if "preload" in CONFIGS[name]:
            library = preload(CONFIGS[name]["preload"])
            if not library:
                results["configs"][name] = {"error": f"lib{CONFIGS[name]['preload']} is not installed"}
                continue
            env.update(library)
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
            r.update(logit_agreement(work, name))
        label = np.load(work / "label_regions.npy")
        results["peer_dice_vs_label"] = {k: dice(peer_masks[i], label[i]) for i, k in enumerate(("tc", "wt", "et"))}
    output = Path(args.output) if args.output else work / "results.json"
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
