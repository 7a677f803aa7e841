"""What the five ``scripts/benchmark.py`` share: timing a bundle command, its peak memory in one unit (MiB), and one
results file name (``<work_dir>/benchmark_results.json``, the name the model cards' ``docs/`` copies keep); and the
steps of a held-out benchmark (:func:`synthesize_once`, :func:`train_evaluate_infer`, :func:`held_out_options`).

Peak memory is the peak resident set size (RSS) that Linux reports in ``ru_maxrss`` (KiB) for a finished process;
each command is measured in its own small wrapper process, so the number is that command's, not the largest of every
command run so far.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.io import write_json

REPO = Path(__file__).resolve().parent.parent
RESULTS_FILE = "benchmark_results.json"

# runs argv[1:], then prints its wall time and the peak RSS of its (finished) children, ru_maxrss in KiB on Linux
_MEASURE = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "rc = subprocess.run(sys.argv[1:]).returncode; "
            "print('MEASURED', rc, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
            "flush=True); sys.exit(rc)")


def kib_to_mib(kib: float) -> float:
    """``ru_maxrss`` (KiB on Linux) in MiB, rounded to 0.1."""
    return round(float(kib) / 1024.0, 1)


def peak_rss_mib(children: bool = False) -> float:
    """Peak RSS in MiB of this process (or, with ``children``, of the largest finished child so far)."""
    import resource

    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return kib_to_mib(resource.getrusage(who).ru_maxrss)


#: ignite's own time lines (``ignite.engine.engine.<Engine> - INFO - ...``): per epoch, or per whole run
IGNITE_EVENTS = {"epoch": r"Epoch\[\d+\] Complete", "run": r"Engine run finished"}


def ignite_seconds(text: str, engine: str, event: str = "epoch") -> list[float]:
    """Ignite's own times of ``engine`` (``SupervisedTrainer``, ``SupervisedEvaluator``, ``InferenceEvaluator``...)
    from a bundle log, in seconds and log order: each epoch's (``event="epoch"``, ``Epoch[n] Complete. Time taken:
    h:mm:ss.fff``) or each run's (``event="run"``, ``Engine run finished. Time taken: ...``).

    Raises:
        KeyError: ``event`` is not one of :data:`IGNITE_EVENTS`.
    """
    found = re.findall(rf"{engine} - INFO - {IGNITE_EVENTS[event]}\. Time taken: (\d+):(\d+):([\d.]+)", text)
    return [int(h) * 3600 + int(m) * 60 + float(sec) for h, m, sec in found]


def config_list(bundle_dir: str | os.PathLike, *names: str) -> str:
    """``"['<bundle_dir>/configs/a.json','<bundle_dir>/configs/b.json']"``: MONAI's form for merged configs."""
    return "[" + ",".join(f"'{Path(str(bundle_dir)) / 'configs' / n}.json'" for n in names) + "]"


def measure(command: list[Any], log: str | os.PathLike, cwd: str | os.PathLike = REPO,
            env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``command`` (stdout and stderr to ``log``; ``env`` default: this process's) and return
    ``{"wall_s", "peak_rss_mib"}`` of that command.

    Raises:
        RuntimeError: the command failed (the message names the log).
    """
    log = Path(str(log))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-c", _MEASURE, *map(str, command)], cwd=str(cwd), stdout=f,
                       stderr=subprocess.STDOUT, text=True, env=env)
    line = next((x for x in reversed(log.read_text().splitlines()) if x.startswith("MEASURED ")), None)
    if line is None or line.split()[1] != "0":
        raise RuntimeError(f"command failed: {' '.join(map(str, command))}; see {log}")
    _, _, wall, kib = line.split()
    return {"wall_s": round(float(wall), 2), "peak_rss_mib": kib_to_mib(float(kib))}


def run_bundle(args: list[Any], log: str | os.PathLike, cwd: str | os.PathLike = REPO,
               env: dict[str, str] | None = None) -> dict[str, float]:
    """:func:`measure` ``python -m monai.bundle <args>`` (run from the repository root by default)."""
    return measure([sys.executable, "-m", "monai.bundle", *args], log, cwd, env)


def run_workflow(bundle_dir: str | os.PathLike, configs: str | Sequence[str], log: str | os.PathLike, *args: Any,
                 env: dict[str, str] | None = None) -> dict[str, float]:
    """:func:`run_bundle` ``run --config_file <bundle_dir>/configs/<configs>.json <args>`` (several configs are
    merged in order); returns ``{"wall_s", "peak_rss_mib"}`` of that command.

    Raises:
        RuntimeError: the command failed (the message names ``log``).
    """
    names = [configs] if isinstance(configs, str) else list(configs)
    return run_bundle(["run", "--config_file", config_list(bundle_dir, *names), *args], log, env=env)


def synthesize_once(bundle_dir: str | os.PathLike, folder: str | os.PathLike, marker: str, log: str | os.PathLike,
                    *args: Any, config: str = "synthesize", env: dict[str, str] | None = None) -> float | None:
    """Write a synthetic set into ``folder`` with the bundle's ``config`` workflow (``--dataset_dir <folder> <args>``)
    unless ``<folder>/<marker>`` exists (a set an earlier run wrote is reused).

    Returns:
        The command's wall time (s), or None when the set was reused.

    Raises:
        RuntimeError: the command failed (the message names ``log``).
    """
    if (Path(str(folder)) / marker).exists():
        return None
    return run_workflow(bundle_dir, config, log, "--dataset_dir", folder, *args, env=env)["wall_s"]


def train_evaluate_infer(bundle_dir: str | os.PathLike, work_dir: str | os.PathLike, train_dir: str | os.PathLike,
                         test_dir: str | os.PathLike, input_dir: str | os.PathLike, workflow: str = "",
                         train_args: Sequence[Any] = (), train: bool = True,
                         env: dict[str, str] | None = None) -> dict[str, Any]:
    """A bundle's held-out accuracy run, each step one measured command (:func:`run_workflow`, log
    ``<work_dir>/logs/<step><workflow>.log``): train (``train<workflow>.json``, ``--dataset_dir <train_dir>
    <train_args>``) into ``<work_dir>/out``, evaluate (``train<workflow>`` + ``evaluate<workflow>``) on
    ``test_dir``, infer (``inference<workflow>``) on ``input_dir`` into ``<work_dir>/pred`` with
    ``<work_dir>/out/models/model.pt``. ``workflow`` is the suffix of a further workflow's configs (breast's
    ``"_detection"``); with ``train`` false the model already in ``<work_dir>/out`` is evaluated.

    Returns:
        ``{"train_s", "peak_rss_train_mib", "evaluate_s", "metrics", "inference_s", "peak_rss_mib"}``: wall times in
        seconds, ``metrics`` the evaluation's ``metrics.json``, peak RSS in MiB of the training command and the
        largest of the commands run (each measured on its own); no training keys when ``train`` is false.

    Raises:
        RuntimeError: a command failed (the message names its log).
    """
    work, result, peaks = Path(str(work_dir)), {}, []
    logs, out = work / "logs", work / "out"
    if train:
        trained = run_workflow(bundle_dir, f"train{workflow}", logs / f"train{workflow}.log", "--dataset_dir",
                               train_dir, "--output_dir", out, *train_args, env=env)
        result["train_s"], result["peak_rss_train_mib"] = trained["wall_s"], trained["peak_rss_mib"]
        peaks.append(trained["peak_rss_mib"])
    evaluated = run_workflow(bundle_dir, [f"train{workflow}", f"evaluate{workflow}"], logs / f"evaluate{workflow}.log",
                             "--dataset_dir", test_dir, "--output_dir", out, env=env)
    result["evaluate_s"] = evaluated["wall_s"]
    result["metrics"] = json.loads((out / "metrics.json").read_text())
    inferred = run_workflow(bundle_dir, f"inference{workflow}", logs / f"inference{workflow}.log", "--input_dir",
                            input_dir, "--output_dir", work / "pred", "--ckpt_path", out / "models" / "model.pt",
                            env=env)
    result["inference_s"] = inferred["wall_s"]
    result["peak_rss_mib"] = max(peaks + [evaluated["peak_rss_mib"], inferred["peak_rss_mib"]])
    return result


def held_out_options(parser: argparse.ArgumentParser, num_cases: int, what: str,
                     train_config: str = "train.json") -> argparse.ArgumentParser:
    """Add the options of a benchmark on a synthetic training set and a held-out set of another seed:
    ``--work_dir`` (required), ``--num_cases`` (``num_cases`` training ``what``; held-out: half as many),
    ``--seed``, ``--heldout_seed`` and ``--epochs`` (0: ``train_config``'s default); returns ``parser``."""
    parser.add_argument("--work_dir", required=True, help="folder for the synthetic sets, outputs, logs and the JSON")
    parser.add_argument("--num_cases", type=int, default=num_cases, help=f"training {what} (held-out: half as many)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training set")
    parser.add_argument("--heldout_seed", type=int, default=1, help="seed of the held-out set")
    parser.add_argument("--epochs", type=int, default=0, help=f"training epochs (0: {train_config}'s default)")
    return parser


def results_path(work_dir: str | os.PathLike) -> Path:
    """``<work_dir>/benchmark_results.json``."""
    return Path(str(work_dir)) / RESULTS_FILE


def write_results(work_dir: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write ``results`` atomically to :func:`results_path`; return the path."""
    path = results_path(work_dir)
    write_json(path, results)
    return path


def median_ms_per_item(items: Sequence[Any], prepare: Callable[[Any], Any], forward: Callable[[Any], Any],
                       warmup: int = 0) -> tuple[float, float]:
    """In-process speed of one item at a time: ``forward(prepare(item))`` untimed on the first ``warmup`` items
    (caches, lazy initialisation), then for every item the time of ``x = prepare(item)`` plus ``forward(x)``, and of
    ``forward(x)`` alone.

    Returns:
        ``(median ms end to end, median ms of forward alone)`` over ``items``.

    Raises:
        ValueError: ``items`` is empty.
    """
    if not items:
        raise ValueError("median_ms_per_item: no items to time")
    for item in items[:warmup]:
        forward(prepare(item))
    total, alone = [], []
    for item in items:
        start = time.perf_counter()
        x = prepare(item)
        middle = time.perf_counter()
        forward(x)
        end = time.perf_counter()
        total.append(end - start)
        alone.append(end - middle)
    return 1000 * float(np.median(total)), 1000 * float(np.median(alone))
