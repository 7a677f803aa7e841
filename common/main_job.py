"""The collection's main job: every bundle end to end on its synthetic data, tracked in one MLflow store.

For each workflow that a bundle declares in its ``configs/metadata.json`` (``common.workflows``), in subprocesses
from the repository root and with exactly the commands of DESIGN.md:

1. synthesize the training data set into ``<out>/data/<name>/train`` (``--seed 0``);
2. synthesize a held-out data set of another seed into ``<out>/data/<name>/heldout`` (``--seed 1``);
3. train with the demo settings (``train.json`` defaults) under ``--tracking mlflow --tracking_uri <store>``;
4. evaluate (``['train.json','evaluate.json']``) on the held-out set, tracked in the same store, so every summary
   line is measured on cases that training never saw (brain's layout has no test split: without this it would
   evaluate on its training cases);
5. infer on ``<heldout>/<inference_input>`` (the sub-path the workflow declares).

``<name>`` is the bundle (``eye``) or, for a bundle with several workflows, ``<bundle>-<workflow>``. Outputs go to
``<out>/runs/<name>``, each step's log to ``<out>/logs/<name>_<step>.log``. At the end it prints a summary table
(bundle, key metric with its 95 % CI, other headline metrics of ``metrics.json``, train and inference time; numbers
written by ``common.formatting`` as in the report) and writes the visual report (``common.report``) from the MLflow
store. It exits non-zero when a bundle failed, after running the others.

Usage (from the repository root)::

    python -m common.main_job                                   # every bundle, store <out>/mlruns.db
    python -m common.main_job --bundles eye breast --out /tmp/demo
    python -m common.main_job --tracking_uri http://127.0.0.1:5000
    python -m common.main_job --tiny                            # tiny sizes (tests, smoke checks)
"""

from __future__ import annotations

import argparse
import json
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

from common.formatting import duration, fmt, fmt_ci
from common.paths import REPO_ROOT
from common.workflows import Workflow, bundle_areas, bundle_workflows

STEPS = ("synthesize", "synthesize_heldout", "train", "evaluate", "inference")
TRAIN_SEED, HELDOUT_SEED = 0, 1
DEFAULT_OUT = REPO_ROOT / "demo_runs"
#: Bundles evaluated with ``--uncertainty true`` (test-time augmentation, ``tta_samples`` x the network passes of
#: evaluate) so that the report shows an uncertainty map and the measures of :mod:`common.uncertainty`: the eye, whose
#: evaluate is the cheapest of the segmentation bundles (a few 2D images). Cost: x 8 network passes; the demo network
#: on a 565 x 584 image took 4.9 s plain and 30 s with 8 samples (2 threads, loaded 2-core machine), so about
#: +4 min for the 10 held-out images (less on an idle machine).
UNCERTAINTY_AREAS = ("eye",)
_PROGRESS = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+)")
_TIMESTAMP = re.compile(r"^\d{4}[-/]\d\d[-/]\d\d[ T][\d:,.]+\s*(- )?")


@dataclass
class Step:
    """One subprocess of a workflow's pipeline."""

    area: str
    name: str
    argv: list[str]
    log: Path


@dataclass
class BundleResult:
    """What happened to one workflow of a bundle (``area`` is the bundle, or ``<bundle>-<workflow>``)."""

    area: str
    status: str = "ok"  # ok | failed | skipped
    message: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------------------------------
# planning
# --------------------------------------------------------------------------------------------------------------------
def select_workflows(requested: Sequence[str] | None,
                     bundles_dir: Path) -> tuple[list[Workflow], list[BundleResult]]:
    """The workflows to run (bundles in name order, workflows in declared order) and the bundles that cannot run:
    a requested bundle with no folder is skipped with a message; one whose ``metadata.json`` declares a workflow
    badly (or names a config file that is missing) is reported as failed."""
    available = bundle_areas(bundles_dir)
    selected, others = [], []
    for area in sorted(set(requested or available)):
        if area not in available:
            others.append(BundleResult(area, "skipped",
                                       f"no bundle folder with configs/metadata.json in {bundles_dir}"))
            continue
        try:
            selected += bundle_workflows(bundles_dir / area)
        except ValueError as e:
            others.append(BundleResult(area, "failed", f"incomplete bundle: {e}"))
    return selected, others


def run_name(workflow: Workflow, bundles_dir: Path) -> str:
    """``eye`` for a bundle's only workflow, ``breast-detection`` for one of several (folder and log names)."""
    return workflow.area if len(bundle_workflows(bundles_dir / workflow.area)) == 1 \
        else f"{workflow.area}-{workflow.name}"


def _config_path(bundles_dir: Path, area: str, name: str) -> str:
    path = bundles_dir / area / "configs" / name
    try:
        return path.relative_to(REPO_ROOT).as_posix()  # the DESIGN.md spelling, run from the repository root
    except ValueError:
        return str(path)


def config_arg(bundles_dir: Path, area: str, names: Sequence[str], tiny: bool = False) -> str:
    """The ``--config_file`` value: one path, or MONAI's list syntax ``"['a.json','b.json']"`` to merge several."""
    names = list(names) + (["tiny.json"] if tiny else [])
    paths = [_config_path(bundles_dir, area, n) for n in names]
    return paths[0] if len(paths) == 1 else "[" + ",".join(f"'{p}'" for p in paths) + "]"


def bundle_steps(workflow: Workflow, out: Path, tracking_uri: str, tiny: bool = False,
                 bundles_dir: Path = REPO_ROOT / "bundles", python: str = sys.executable) -> list[Step]:
    """The DESIGN.md commands of one workflow, training data and held-out data synthesized with different seeds."""
    name = run_name(workflow, bundles_dir)
    data, heldout, runs, logs = out / "data" / name / "train", out / "data" / name / "heldout", out / "runs" / name, \
        out / "logs"
    bundle = [python, "-m", "monai.bundle", "run", "--config_file"]
    tracking = ["--tracking", "mlflow", "--tracking_uri", tracking_uri]
    input_dir = heldout / workflow.inference_input if workflow.inference_input else heldout
    area, cfg = workflow.area, workflow.configs

    def config(step: str) -> str:
        return config_arg(bundles_dir, area, cfg[step], tiny)

    argvs = {
        "synthesize": bundle + [config("synthesize"), "--dataset_dir", str(data), "--seed", str(TRAIN_SEED)],
        "synthesize_heldout": bundle + [config("synthesize"), "--dataset_dir", str(heldout),
                                        "--seed", str(HELDOUT_SEED)],
        "train": bundle + [config("train"), "--dataset_dir", str(data), "--output_dir", str(runs)] + tracking,
        "evaluate": bundle + [config("evaluate"), "--dataset_dir", str(heldout), "--output_dir", str(runs)] + tracking
        + (["--uncertainty", "true"] if area in UNCERTAINTY_AREAS else []),
        "inference": bundle + [config("inference"), "--input_dir", str(input_dir), "--output_dir", str(runs)],
    }
    return [Step(name, step, argvs[step], logs / f"{name}_{step}.log") for step in STEPS]


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
    metrics_file = steps[0].log.parent.parent / "runs" / area / "metrics.json"  # <out>/runs/<name>, as planned
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
        echo(f"[{area}] {step.name} done in {duration(seconds)}")
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
def headline(metrics: dict[str, Any] | None, max_others: int = 4) -> tuple[str, str]:
    """``("dice 0.8125 [0.78, 0.845]", "auc 0.951, accuracy 0.902")`` from a metrics.json object (DESIGN.md: the
    ``key_metric`` name, each metric with its ``<name>_ci95`` pair; ``null`` for an undefined value)."""
    if not metrics:
        return "-", "-"
    key = metrics.get("key_metric")
    low, high = metrics.get(f"{key}_ci95") or (None, None)
    key_text = f"{key} {fmt(metrics.get(key))} {fmt_ci(low, high)}" if isinstance(key, str) else "-"
    others = [f"{name} {fmt(value)}" for name, value in metrics.items()
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
                     *(duration(r.seconds[s]) if s in r.seconds else "-" for s in ("train", "inference"))))
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
                                     description="Run every bundle end to end (synthesize, train, evaluate on held-out "
                                                 "data, infer), tracked in one MLflow store; print a summary and write "
                                                 "a report.")
    parser.add_argument("--bundles", nargs="+", default=None, metavar="AREA",
                        help="bundles to run, among the folders of bundles/ (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--tracking_uri", default=None, help="MLflow tracking URI (default: sqlite:///<out>/mlruns.db)")
    parser.add_argument("--tiny", action="store_true", help="merge each bundle's configs/tiny.json (seconds per step)")
    parser.add_argument("--bundles_dir", type=Path, default=REPO_ROOT / "bundles", help=argparse.SUPPRESS)
    parser.add_argument("--no_report", action="store_true", help="do not write the report")
    args = parser.parse_args(argv)
    available = bundle_areas(args.bundles_dir)
    unknown = sorted(set(args.bundles or ()) - set(available))
    if unknown and args.bundles_dir == REPO_ROOT / "bundles":
        parser.error(f"unknown bundle(s) {', '.join(unknown)}; choose among {', '.join(available)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = args.tracking_uri or default_tracking_uri(out)
    selected, results = select_workflows(args.bundles, args.bundles_dir)
    for r in results:
        print(f"[{r.area}] {'skipped' if r.status == 'skipped' else 'FAILED'}: {r.message}")
    plans = {run_name(w, args.bundles_dir): bundle_steps(w, out, uri, args.tiny, args.bundles_dir) for w in selected}
    print(f"main job: {len(plans)} workflow(s) {', '.join(plans) or '(none)'}; outputs in {out}; "
          f"MLflow store {uri}; evaluated on held-out data (seed {HELDOUT_SEED})"
          f"{'; tiny configs' if args.tiny else ''}")
    start = time.perf_counter()
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
    results.sort(key=lambda r: r.area)
    print(f"\nmain job finished in {duration(time.perf_counter() - start)}\n")
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
