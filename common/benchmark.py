"""What the five ``scripts/benchmark.py`` share: timing a bundle command, its peak memory in one unit (MiB), and one
results file name (``<work_dir>/benchmark_results.json``, the name the model cards' ``docs/`` copies keep).

Peak memory is the peak resident set size (RSS) that Linux reports in ``ru_maxrss`` (KiB) for a finished process;
each command is measured in its own small wrapper process, so the number is that command's, not the largest of every
command run so far.
"""

from __future__ import annotations

import os
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
