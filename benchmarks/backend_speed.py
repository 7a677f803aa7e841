"""Time per case of each bundle's network under its inferer: eager PyTorch, its levers, TorchScript, ONNX Runtime (CPU).

Run from the repository root (about a minute)::

    python benchmarks/backend_speed.py --output /tmp/backend_speed.json

Each bundle runs in its own process (the bundles' ``scripts`` packages share one name). The network is the bundle's
default (real-size) ``network_def`` from ``configs/inference.json`` with seeded weights (time does not depend on the
weights), run by the config's own ``inferer`` through ``common.backends.with_backend`` on one input of the size a
real case gives it after preprocessing (:data:`CASES`). Rows: eager (contiguous, ``no_grad``: the reference), eager
under ``torch.inference_mode``, eager with the network in channels-last memory format (``channels_last_3d`` for a 3D
network), TorchScript and ONNX Runtime. One warm-up (which includes the export), then the median of
``--repeats`` runs; the maximum absolute difference of the outputs to eager is recorded too. Loading, preprocessing
and writing are the same for every backend and are not timed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: area -> (network input of one case, what it stands for)
CASES = {
    "brain": ((1, 4, 56, 69, 52), "a BraTS case at the demo 3 mm grid after the foreground crop"),
    "eye": ((1, 3, 584, 565), "a DRIVE image, 565 x 584"),
    "cardiac": ((1, 1, 96, 96, 10), "a short-axis stack (10 slices) after the 96 x 96 centre crop"),
    "pathology": ((64, 3, 96, 96), "one batch of 64 PCam patches"),
    "breast": ((1, 1, 64, 64), "a mass ROI crop at the default 64 x 64"),
}


def worker(area: str, repeats: int) -> dict:
    import numpy as np
    import torch
    from monai.bundle import ConfigParser

    from common.backends import with_backend

    bundle = REPO / "bundles" / area
    sys.path.insert(0, str(bundle))
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    parser["ckpt_path"] = str(bundle / "no_such_checkpoint" / "model.pt")  # default sizes
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    inferer = parser.get_parsed_content("inferer")
    shape, _ = CASES[area]
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    result = {"input_shape": list(shape), "torch_threads": torch.get_num_threads()}
    conv3d = any(isinstance(m, torch.nn.Conv3d) for m in net.modules())  # cardiac: 5D input, 2D network per slice
    memory_format = torch.channels_last_3d if conv3d else torch.channels_last
    channels_last = copy.deepcopy(net).to(memory_format=memory_format)
    #: row -> (network, gradient mode): eager contiguous (the reference), the eager levers one at a time, exports
    rows = {"torch": (net, torch.no_grad), "torch_inference_mode": (net, torch.inference_mode),
            "torch_channels_last": (channels_last, torch.no_grad),
            "torchscript": (with_backend(net, "torchscript"), torch.no_grad),
            "onnxruntime": (with_backend(net, "onnxruntime"), torch.no_grad)}
    reference = None
    for name, (model, mode) in rows.items():
        times = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            with mode():
                out = inferer(x, model)
            if i:
                times.append(time.perf_counter() - start)
        out = torch.as_tensor(out).float()
        if reference is None:
            reference = out
        result[name] = {"median_s": float(np.median(times)), "runs_s": times,
                        "max_abs_diff_to_eager": float((out - reference).abs().max())}
    for name in rows:
        result[name]["ratio_to_eager"] = result[name]["median_s"] / result["torch"]["median_s"]
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--areas", default=",".join(CASES))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(args.worker, args.repeats)
        print("RESULT " + json.dumps(result))
        return result
    results = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpu_count": os.cpu_count(),
               "repeats": args.repeats, "bundles": {}}
    for area in [a.strip() for a in args.areas.split(",") if a.strip()]:
        proc = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--worker", area],
                              capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"})
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        results["bundles"][area] = (json.loads(line[-1][len("RESULT "):]) if line and not proc.returncode
                                    else {"error": proc.stderr[-2000:]})
        results["bundles"][area]["case"] = CASES[area][1]
        print(area, json.dumps(results["bundles"][area])[:300], flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
