"""The collection's main job: every bundle end to end on its synthetic data, tracked in one MLflow store.

For each selected bundle, in subprocesses from the repository root and with exactly the commands of DESIGN.md:

1. synthesize the dataset into ``<out>/data/<area>``;
2. train with the demo settings (``train.json`` defaults) under ``--tracking mlflow --tracking_uri <store>``;
3. evaluate (``['train.json','evaluate.json']``), tracked in the same store;
4. infer on ``<dataset>/<harness_inference_input>`` (the sub-path named in the bundle's ``configs/tiny.json``).

Outputs go to ``<out>/runs/<area>``, each step's log to ``<out>/logs/<area>_<step>.log``. At the end it prints a
summary table (bundle, key metric with its 95 % CI, other headline metrics of ``metrics.json``, train and inference
time) and writes the visual report (``common.report``) from the MLflow store. It exits non-zero when a bundle failed,
after running the others.

Usage (from the repository root)::

    python -m common.main_job                                   # all five bundles, store <out>/mlruns.db
    python -m common.main_job --bundles eye breast --out /tmp/demo
    python -m common.main_job --tracking_uri http://127.0.0.1:5000
    python -m common.main_job --tiny                            # tiny sizes (tests, smoke checks)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.paths import REPO_ROOT

AREAS = ("brain", "eye", "pathology", "breast", "cardiac")
REQUIRED_CONFIGS = ("synthesize.json", "train.json", "evaluate.json", "inference.json")
STEPS = ("synthesize", "train", "evaluate", "inference")
DEFAULT_OUT = REPO_ROOT / "demo_runs"
_PROGRESS = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+)")
_TIMESTAMP = re.compile(r"^\d{4}[-/]\d\d[-/]\d\d[ T][\d:,.]+\s*(- )?")


@dataclass
class Step:
    """One subprocess of a bundle's pipeline."""

    area: str
    name: str
    argv: list[str]
    log: Path


@dataclass
class BundleResult:
    """What happened to one bundle."""

    area: str
    status: str = "ok"  # ok | failed | skipped
    message: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------------------------------
# planning
# --------------------------------------------------------------------------------------------------------------------
def select_bundles(requested: Sequence[str] | None, bundles_dir: Path) -> tuple[list[str], list[BundleResult]]:
    """The bundles to run (in ``AREAS`` order) and the skipped ones: a bundle folder that does not exist yet is
    skipped with a message; a folder that lacks one of the four workflow configs is reported as failed."""
    selected, skipped = [], []
    for area in [a for a in AREAS if a in set(requested or AREAS)]:
        folder = bundles_dir / area
        if not folder.is_dir():
            skipped.append(BundleResult(area, "skipped", f"no bundle folder {folder} yet"))
            continue
        missing = [c for c in REQUIRED_CONFIGS if not (folder / "configs" / c).is_file()]
        if missing:
            names = ", ".join(f"configs/{c}" for c in missing)
            skipped.append(BundleResult(area, "failed", f"incomplete bundle: missing {names}"))
            continue
        selected.append(area)
    return selected, skipped


def _config_path(bundles_dir: Path, area: str, name: str) -> str:
    path = bundles_dir / area / "configs" / f"{name}.json"
    try:
        return path.relative_to(REPO_ROOT).as_posix()  # the DESIGN.md spelling, run from the repository root
    except ValueError:
        return str(path)


def config_arg(bundles_dir: Path, area: str, names: Sequence[str], tiny: bool = False) -> str:
    """The ``--config_file`` value: one path, or MONAI's list syntax ``"['a.json','b.json']"`` to merge several."""
    names = list(names) + (["tiny"] if tiny else [])
    paths = [_config_path(bundles_dir, area, n) for n in names]
    return paths[0] if len(paths) == 1 else "[" + ",".join(f"'{p}'" for p in paths) + "]"


def inference_subpath(bundles_dir: Path, area: str) -> str:
    """``harness_inference_input`` of the bundle's ``configs/tiny.json`` ("" when absent: the dataset folder)."""
    tiny = bundles_dir / area / "configs" / "tiny.json"
    try:
        return str(json.loads(tiny.read_text()).get("harness_inference_input", "") or "")
    except (OSError, ValueError):
        return ""


def bundle_steps(area: str, out: Path, tracking_uri: str, tiny: bool = False,
                 bundles_dir: Path = REPO_ROOT / "bundles", python: str = sys.executable) -> list[Step]:
    """The four DESIGN.md commands of one bundle."""
    data, runs, logs = out / "data" / area, out / "runs" / area, out / "logs"
    bundle = [python, "-m", "monai.bundle", "run", "--config_file"]
    tracking = ["--tracking", "mlflow", "--tracking_uri", tracking_uri]
    sub = inference_subpath(bundles_dir, area)
    input_dir = data / sub if sub else data
    argvs = {
        "synthesize": bundle + [config_arg(bundles_dir, area, ["synthesize"], tiny), "--dataset_dir", str(data)],
        "train": bundle + [config_arg(bundles_dir, area, ["train"], tiny), "--dataset_dir", str(data),
                           "--output_dir", str(runs)] + tracking,
        "evaluate": bundle + [config_arg(bundles_dir, area, ["train", "evaluate"], tiny), "--dataset_dir", str(data),
                              "--output_dir", str(runs)] + tracking,
        "inference": bundle + [config_arg(bundles_dir, area, ["inference"], tiny), "--input_dir", str(input_dir),
                               "--output_dir", str(runs)],
    }
    return [Step(area, name, argvs[name], logs / f"{area}_{name}.log") for name in STEPS]


# --------------------------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------------------------
def run_step(step: Step, status: Any = None, progress: Any = None,
             cwd: Path = REPO_ROOT) -> tuple[int, float, list[str]]:
    """Run ``step`` with its output in ``step.log``; show its latest line in ``status`` and its epoch/iteration
    progress in ``progress`` (tqdm bars, optional). Returns the exit code, the wall time and the last log lines."""
    step.log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    tail: deque[str] = deque(maxlen=40)
    start = time.perf_counter()
    with open(step.log, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(step.argv) + "\n")
        proc = subprocess.Popen(step.argv, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                line = line.rstrip()
                if not line:
                    continue
                tail.append(line)
                if status is not None:
                    shown = _TIMESTAMP.sub("", line)
                    shown = shown if len(shown) <= 110 else shown[:107] + "..."
                    status.set_description_str(f"  {step.area}/{step.name} | {shown}", refresh=True)
                match = _PROGRESS.search(line)
                if progress is not None and match:
                    epoch, epochs, it, its = (int(g) for g in match.groups())
                    progress.total = epochs * its
                    progress.n = (epoch - 1) * its + it
                    progress.set_description_str(f"  {step.area} epoch {epoch}/{epochs}")
                    progress.refresh()
            code = proc.wait()
        except BaseException:  # Ctrl-C: stop the whole child process group, then stop
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
    return code, time.perf_counter() - start, list(tail)


def run_bundle(area: str, steps: Sequence[Step], outer: Any = None, status: Any = None, progress: Any = None,
               echo: Any = print) -> BundleResult:
    """Run the steps of one bundle in order; stop at the first failure (its log tail is echoed)."""
    result = BundleResult(area)
    metrics_file = steps[0].log.parent.parent / "runs" / area / "metrics.json"
    metrics_file.unlink(missing_ok=True)  # never report a stale metrics.json from an earlier run
    for step in steps:
        if outer is not None:
            outer.set_description_str(f"{area}: {step.name}")
        if progress is not None:
            progress.reset(total=1)
            progress.set_description_str(f"  {area}/{step.name}")
        code, seconds, tail = run_step(step, status, progress)
        result.seconds[step.name] = seconds
        if outer is not None:
            outer.update(1)
        if code != 0:
            result.status, result.message = "failed", f"{step.name} exited with {code}; log {step.log}"
            echo(f"[{area}] {step.name} FAILED after {seconds:.0f} s (exit {code}); last lines of {step.log}:")
            for line in tail[-25:]:
                echo(f"    {line}")
            if outer is not None:
                outer.update(len(steps) - 1 - list(steps).index(step))
            break
        echo(f"[{area}] {step.name} done in {_duration(seconds)}")
    if metrics_file.is_file():
        try:
            result.metrics = json.loads(metrics_file.read_text())
        except ValueError as e:
            result.status, result.message = "failed", f"unreadable {metrics_file}: {e}"
    elif result.status == "ok":
        result.status, result.message = "failed", f"evaluate wrote no {metrics_file}"
    return result


# --------------------------------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------------------------------
def _num(value: Any) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def headline(metrics: dict[str, Any] | None, max_others: int = 4) -> tuple[str, str]:
    """``("dice 0.812 [0.780, 0.845]", "auc 0.951, accuracy 0.902")`` from a metrics.json object."""
    if not metrics:
        return "-", "-"
    key = metrics.get("key_metric")
    key_text = "-"
    if isinstance(key, str):
        ci = metrics.get(f"{key}_ci95")
        ci_text = f" [{_num(ci[0])}, {_num(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
        key_text = f"{key} {_num(metrics.get(key))}{ci_text}"
    others = [f"{name} {_num(value)}" for name, value in metrics.items()
              if name not in (key, "key_metric", "num_cases") and not name.endswith(("_ci95", "_num_undefined"))
              and (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)))]
    text = ", ".join(others[:max_others]) + (", ..." if len(others) > max_others else "")
    return key_text, text or "-"


def format_summary(results: Sequence[BundleResult]) -> str:
    """The terminal table: bundle, status, key metric with 95 % CI, cases, other metrics, train and inference time."""
    header = ("bundle", "status", "key metric [95% CI]", "cases", "other metrics", "train", "inference")
    rows = []
    for r in results:
        key_text, others = headline(r.metrics)
        cases = (r.metrics or {}).get("num_cases")
        rows.append((r.area, r.status, key_text, str(cases) if cases is not None else "-", others,
                     _duration(r.seconds.get("train")), _duration(r.seconds.get("inference"))))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [f"+{line}+", "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |", f"+{line}+"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    out.append(f"+{line}+")
    notes = [f"  {r.area}: {r.message}" for r in results if r.message]
    return "\n".join(out + notes)


def default_tracking_uri(out: Path) -> str:
    """``sqlite:///<out>/mlruns.db`` (absolute), the one store every bundle of the job logs to."""
    return "sqlite:///" + str((out / "mlruns.db").resolve())


# --------------------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m common.main_job",
                                     description="Run every bundle end to end (synthesize, train, evaluate, infer), "
                                                 "tracked in one MLflow store; print a summary and write a report.")
    parser.add_argument("--bundles", nargs="+", choices=AREAS, default=list(AREAS), metavar="AREA",
                        help=f"bundles to run, among {', '.join(AREAS)} (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--tracking_uri", default=None, help="MLflow tracking URI (default: sqlite:///<out>/mlruns.db)")
    parser.add_argument("--tiny", action="store_true", help="merge each bundle's configs/tiny.json (seconds per step)")
    parser.add_argument("--bundles_dir", type=Path, default=REPO_ROOT / "bundles", help=argparse.SUPPRESS)
    parser.add_argument("--no_report", action="store_true", help="do not write the report")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = args.tracking_uri or default_tracking_uri(out)
    selected, results = select_bundles(args.bundles, args.bundles_dir)
    for r in results:
        print(f"[{r.area}] {'skipped' if r.status == 'skipped' else 'FAILED'}: {r.message}")
    print(f"main job: {len(selected)} bundle(s) {', '.join(selected) or '(none)'}; outputs in {out}; "
          f"MLflow store {uri}{'; tiny configs' if args.tiny else ''}")
    start = time.perf_counter()
    plans = {area: bundle_steps(area, out, uri, args.tiny, args.bundles_dir) for area in selected}
    outer = tqdm(total=sum(len(s) for s in plans.values()), position=0, unit="step", dynamic_ncols=True,
                 bar_format="{desc:<22} {bar} {n_fmt}/{total_fmt} steps [{elapsed}]")
    live = sys.stderr.isatty()  # epoch bar and log-line tail only on a terminal (a CI log gets the step lines)
    progress = tqdm(total=1, position=1, leave=False, dynamic_ncols=True, disable=not live,
                    bar_format="{desc:<28} {bar} {percentage:3.0f}%")
    status = tqdm(total=0, position=2, leave=False, dynamic_ncols=True, disable=not live, bar_format="{desc}")
    try:
        for area, steps in plans.items():
            results.append(run_bundle(area, steps, outer, status, progress, echo=tqdm.write))
    finally:
        status.close()
        progress.close()
        outer.close()
    results.sort(key=lambda r: AREAS.index(r.area))
    print(f"\nmain job finished in {_duration(time.perf_counter() - start)}\n")
    print(format_summary(results))
    failed = [r.area for r in results if r.status == "failed"]
    if selected and not args.no_report:
        try:
            from common.report import generate_report

            report = generate_report(uri, out / "report")
            print(f"\nreport: {report}\nbrowse the runs: mlflow ui --backend-store-uri {uri}")
        except Exception as e:  # noqa: BLE001 - the table above is still valid; say why there is no report
            print(f"\nno report written: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append("report")
    if failed:
        print(f"\nFAILED: {', '.join(failed)} (logs in {out / 'logs'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
