"""A Markdown report of the bundles' MLflow runs: learning curves, evaluation metrics with 95 % CIs, overlays.

Everything is read from an MLflow tracking store (``sqlite:///...`` or ``http://host:port``), never from the
bundles' output folders, so the report shows exactly what was tracked. One section per bundle workflow: an MLflow
experiment is one bundle (named after it), and a bundle that declares several workflows in its ``metadata.json``
(breast: ``classification``, ``detection``) logs them all into it, told apart by the run tag ``bundle_workflow``.
A section's title is the experiment name for the bundle's first declared workflow (tag ``bundle_workflows`` gives the
order) and ``<experiment> — <workflow>`` for the others; runs without ``bundle_workflow`` (older stores) count as the
first workflow. In each section the latest training run (tag ``workflow=train``, written by
``common.tracking.MLflowRunRecorder``) gives the learning curves (``train_loss`` per iteration, ``train_loss_epoch``
and every ``val_<name>`` per epoch), the latest evaluate run of the same workflow (``workflow=evaluate``, tag
``key_metric``) the metric table (``<name>``, ``<name>_ci95_low``, ``<name>_ci95_high``), and both runs'
``overlays/`` artifacts are copied next to the report and linked. Runs without the recorder's ``workflow`` tag
(MONAI's switch alone) are not shown: every bundle attaches the recorder. Numbers, CIs, units and times are
written by ``common.formatting``, as in the main job's summary.

Usage::

    python -m common.report --tracking_uri sqlite:////abs/path/mlruns.db --out DIR   # writes DIR/report.md
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.formatting import duration, fmt, fmt_ci, metric_unit
from common.io import atomic_path, save_figure, write_text

logger = logging.getLogger(__name__)
CI_LOW, CI_HIGH = "_ci95_low", "_ci95_high"


@dataclass
class Curve:
    """One learning curve: x in epochs, y values, axis label and unit."""

    name: str
    x: list[float]
    y: list[float]
    unit: str


@dataclass
class BundleSection:
    """What the report shows for one workflow of one experiment (bundle).

    ``title`` (default: ``experiment``) heads the section and names its folder; ``workflow`` is the run tag
    ``bundle_workflow`` (None: the runs had none)."""

    experiment: str
    train_run: Any = None
    evaluate_run: Any = None
    curves_png: Path | None = None
    metric_rows: list[tuple[str, float | None, float | None, float | None]] = field(default_factory=list)
    key_metric: str | None = None
    num_cases: int | None = None
    overlays: list[Path] = field(default_factory=list)
    workflow: str | None = None
    title: str = ""

    def __post_init__(self) -> None:
        self.title = self.title or self.experiment


def slug(text: str) -> str:
    """A file-system friendly version of ``text``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "experiment"


def _history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def learning_curves(client: Any, run: Any) -> list[Curve]:
    """Training loss per epoch (per iteration too, when logged) and every ``val_`` metric per epoch of ``run``."""
    run_id, metrics = run.info.run_id, run.data.metrics
    curves: list[Curve] = []
    if "train_loss_epoch" in metrics:
        points = _history(client, run_id, "train_loss_epoch")
        curves.append(Curve("train loss (epoch mean)", [p[0] for p in points], [p[1] for p in points],
                            "loss (unitless)"))
    epoch_length = float(run.data.params.get("epoch_length") or 0)  # MONAI's param: iterations per epoch
    if "train_loss" in metrics and epoch_length > 0:
        points = _history(client, run_id, "train_loss")
        curves.append(Curve("train loss (iteration)", [p[0] / epoch_length for p in points], [p[1] for p in points],
                            "loss (unitless)"))
    for key in sorted(k for k in metrics if k.startswith("val_") and not k.startswith("val_best_")):
        points = _history(client, run_id, key)
        curves.append(Curve(key, [p[0] for p in points], [p[1] for p in points], metric_unit(key[len("val_"):])))
    return curves


def plot_curves(curves: Sequence[Curve], path: Path, title: str) -> Path | None:
    """One panel for the training loss (iteration and epoch mean) and one per validation metric; PNG via Agg."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    loss = [c for c in curves if c.name.startswith("train loss")]
    others = [c for c in curves if not c.name.startswith("train loss")]
    panels: list[list[Curve]] = ([loss] if loss else []) + [[c] for c in others]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = int(math.ceil(len(panels) / cols))
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        for curve in panel:
            iteration = "iteration" in curve.name
            ax.plot(curve.x, curve.y, marker=None if iteration else "o", markersize=3,
                    linewidth=0.8 if iteration else 1.8, alpha=0.45 if iteration else 1.0, label=curve.name)
        first = panel[0]
        ax.set_title("training loss" if first.name.startswith("train loss") else
                     f"validation {first.name[len('val_'):]}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0, max(max(c.x) for c in panel if c.x) + 0.25 if any(c.x for c in panel) else 1)
        ax.set_ylabel(first.unit)
        ax.grid(True, alpha=0.3)
        if len(panel) > 1:
            ax.legend(fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    wrapped = textwrap.fill(title, width=int(48 * cols))
    fig.suptitle(wrapped, fontsize=11)
    save_figure(fig, path)
    return path


def evaluation_rows(run: Any) -> tuple[list[tuple[str, float | None, float | None, float | None]], str | None]:
    """``(name, value, ci_low, ci_high)`` for every metric of an evaluate run, the key metric (the run's
    ``key_metric`` tag, else the first name) first; and that key metric."""
    metrics = run.data.metrics
    names = sorted(k for k in metrics if not k.endswith((CI_LOW, CI_HIGH)) and k != "num_cases"
                   and not k.endswith("_num_undefined"))
    key = run.data.tags.get("key_metric")
    if key in names:
        names.remove(key)
        names.insert(0, key)
    rows = [(n, metrics.get(n), metrics.get(n + CI_LOW), metrics.get(n + CI_HIGH)) for n in names]
    return rows, key if key in metrics else (names[0] if names else None)


def _overlay_artifacts(client: Any, run_id: str) -> list[str]:
    """The PNGs the recorder logged (flat) under the run's ``overlays/`` artifact folder."""
    return sorted(item.path for item in client.list_artifacts(run_id, "overlays")
                  if not item.is_dir and item.path.lower().endswith(".png"))


def copy_overlays(client: Any, run: Any, dest: Path, prefix: str, limit: int = 6) -> list[Path]:
    """Download up to ``limit`` overlay PNGs of ``run`` into ``dest`` (atomic copies), return their paths."""
    copied: list[Path] = []
    artifacts = _overlay_artifacts(client, run.info.run_id)[:limit]
    if not artifacts:
        return copied
    with tempfile.TemporaryDirectory() as tmpdir:
        for artifact in artifacts:
            local = client.download_artifacts(run.info.run_id, artifact, tmpdir)
            target = dest / f"{prefix}_{slug(Path(artifact).name)}"
            with atomic_path(target) as tmp:
                shutil.copyfile(local, tmp)
            copied.append(target)
    return copied


def _declared_workflows(runs: Sequence[Any]) -> list[str]:
    """The ``bundle_workflows`` tag of the first (newest) run that has one, split; [] when none has."""
    tag = next((r.data.tags["bundle_workflows"] for r in runs if r.data.tags.get("bundle_workflows")), "")
    return [name for name in tag.split(",") if name]


def workflow_groups(runs: Sequence[Any]) -> list[tuple[str | None, list[Any]]]:
    """The runs of one experiment grouped by their ``bundle_workflow`` tag, in the bundle's declared order.

    ``runs`` are newest first; the declared order is the ``bundle_workflows`` tag of the newest run that has one
    (workflows seen only in tags follow, by name). Runs without ``bundle_workflow`` join the first workflow's group,
    or form the one group ``None`` when no run has the tag. Each group keeps the runs' order."""
    declared = _declared_workflows(runs)
    tagged = {r.data.tags["bundle_workflow"] for r in runs if r.data.tags.get("bundle_workflow")}
    order: list[str | None] = [*declared, *sorted(tagged - set(declared))] or [None]
    groups: dict[str | None, list[Any]] = {}
    for run in runs:
        groups.setdefault(run.data.tags.get("bundle_workflow") or order[0], []).append(run)
    return [(name, groups[name]) for name in order if name in groups]


def collect(client: Any, experiment: Any, out: Path) -> list[BundleSection]:
    """One section per bundle workflow of ``experiment`` (:func:`workflow_groups`): the workflow's latest train and
    evaluate runs, their plot and overlays written under ``out/<slug of the section title>``. Empty when the
    experiment has no run with the recorder's ``workflow`` tag."""
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=500)
    runs = [r for r in runs if r.data.tags.get("workflow") in ("train", "evaluate")]
    groups = workflow_groups(runs)
    first = (_declared_workflows(runs) or [groups[0][0] if groups else None])[0]
    sections = []
    for name, group in groups:
        title = experiment.name if name is None or name == first else f"{experiment.name} — {name}"
        sections.append(_collect_section(client, experiment.name, name, title, group, out))
    return sections


def _collect_section(client: Any, experiment: str, workflow: str | None, title: str, runs: Sequence[Any],
                     out: Path) -> BundleSection:
    section = BundleSection(experiment, workflow=workflow, title=title)
    section.train_run = next((r for r in runs if r.data.tags.get("workflow") == "train"), None)
    section.evaluate_run = next((r for r in runs if r.data.tags.get("workflow") == "evaluate"), None)
    folder = out / slug(title)
    if section.train_run is not None:
        curves = learning_curves(client, section.train_run)
        section.curves_png = plot_curves(curves, folder / "learning_curves.png",
                                         f"{title}: learning curves ({section.train_run.info.run_name})")
        section.overlays += copy_overlays(client, section.train_run, folder / "overlays", "train")
    if section.evaluate_run is not None:
        section.metric_rows, section.key_metric = evaluation_rows(section.evaluate_run)
        cases = section.evaluate_run.data.metrics.get("num_cases")
        section.num_cases = int(cases) if cases is not None else None
        section.overlays = copy_overlays(client, section.evaluate_run, folder / "overlays", "evaluate") + \
            section.overlays
    return section


def _duration(run: Any) -> str:
    return duration((run.info.end_time - run.info.start_time) / 1000.0 if run is not None and run.info.end_time
                    else None)


def render(sections: Sequence[BundleSection], tracking_uri: str, out: Path) -> str:
    """The Markdown text of the report (image links relative to ``out``)."""
    lines = ["# Bundle collection: experiment report", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from the MLflow store `{tracking_uri}` "
             f"({_count(sections)}). Look at the same runs interactively with "
             f"`mlflow ui --backend-store-uri {tracking_uri}`.", "",
             "All numbers come from synthetic (phantom) data unless the runs were trained on a real dataset; "
             "95 % CIs are percentile bootstrap intervals over cases.", "",
             "## Summary", "",
             "| bundle (experiment) | key metric | value | 95 % CI | cases | training time | evaluate run |",
             "|---|---|---|---|---|---|---|"]
    for s in sections:
        row = next((r for r in s.metric_rows if r[0] == s.key_metric), None)
        value, ci = (fmt(row[1]), fmt_ci(row[2], row[3])) if row else ("n/a", "n/a")
        lines.append(f"| [{s.title}](#{slug(s.title).lower()}) | {s.key_metric or 'n/a'} | {value} | {ci} | "
                     f"{s.num_cases if s.num_cases is not None else 'n/a'} | {_duration(s.train_run)} | "
                     f"{s.evaluate_run.info.run_name if s.evaluate_run else 'none'} |")
    for s in sections:
        lines += ["", f'<a id="{slug(s.title).lower()}"></a>', "", f"## {s.title}", ""]
        if s.train_run is not None:
            params = s.train_run.data.params
            shown = ", ".join(f"`{k}={v}`" for k, v in sorted(params.items()) if not k.endswith("_version"))
            lines += [f"Training run **{s.train_run.info.run_name}** (`{s.train_run.info.run_id}`, "
                      f"{_duration(s.train_run)}).", "", f"Hyper-parameters: {shown or 'none logged'}.", ""]
            if s.curves_png is not None:
                rel = s.curves_png.relative_to(out).as_posix()
                lines += [f"![{s.title} learning curves]({rel})", ""]
            else:
                lines += ["No learning curves were logged for this run.", ""]
        else:
            lines += ["No training run in this store.", ""]
        if s.evaluate_run is not None:
            lines += ["### Evaluation", "",
                      f"Run **{s.evaluate_run.info.run_name}** (`{s.evaluate_run.info.run_id}`), "
                      f"{s.num_cases if s.num_cases is not None else 'an unknown number of'} cases; key metric "
                      f"`{s.key_metric}` in bold.", "",
                      "| metric | value | 95 % CI |", "|---|---|---|"]
            for name, value, low, high in s.metric_rows:
                label = f"**{name}**" if name == s.key_metric else name
                undefined = s.evaluate_run.data.metrics.get(f"{name}_num_undefined")
                note = f" ({int(undefined)} case(s) undefined)" if undefined else ""
                lines.append(f"| {label} | {fmt(value)}{note} | {fmt_ci(low, high)} |")
            lines.append("")
        else:
            lines += ["No evaluate run in this store.", ""]
        lines += calibration_lines(s, out)
        lines += uncertainty_lines(s, out)
        overlays = [png for png in s.overlays if "reliability" not in png.stem and "uncertainty" not in png.stem]
        if overlays:
            lines += ["### Prediction overlays", "", "Image, ground truth and prediction side by side.", ""]
            for png in overlays:
                rel = png.relative_to(out).as_posix()
                lines += [f"![{png.stem}]({rel})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _count(sections: Sequence[BundleSection]) -> str:
    """``"5 experiment(s)"``, or ``"5 experiment(s), 6 workflow sections"`` when a bundle has several."""
    experiments = len({s.experiment for s in sections})
    return f"{experiments} experiment(s)" + (f", {len(sections)} workflow sections" if len(sections) > experiments
                                             else "")


def calibration_lines(section: BundleSection, out: Path) -> list[str]:
    """A "Calibration" subsection for an evaluate run that logged ``ece`` (the classifiers, issue 15): ECE before
    and after temperature scaling, Brier score, the operating threshold, and the reliability diagram when it was
    logged as an overlay (``reliability.png``)."""
    run = section.evaluate_run
    metrics = run.data.metrics if run is not None else {}
    if "ece" not in metrics:
        return []
    parts = [f"ECE {fmt(metrics['ece'])} after temperature scaling"]
    if "ece_uncalibrated" in metrics:
        parts[0] += f" ({fmt(metrics['ece_uncalibrated'])} before)"
    if "brier" in metrics:
        parts.append(f"Brier score {fmt(metrics['brier'])}")
    if "threshold" in metrics:
        parts.append(f"labels at threshold {fmt(metrics['threshold'])} (chosen on the validation split)")
    lines = ["### Calibration", "", "; ".join(parts) + ". ECE: 15 equal-width bins, 0 = probabilities match the "
             "observed frequencies.", ""]
    for png in section.overlays:
        if "reliability" in png.stem:
            lines += [f"![reliability diagram]({png.relative_to(out).as_posix()})", ""]
    return lines


def uncertainty_lines(section: BundleSection, out: Path) -> list[str]:
    """An "Uncertainty" subsection for an evaluate run with ``--uncertainty true`` (segmentation bundles, issue 15):
    whether the test-time-augmentation entropy points at the errors (``uncertainty_error_auc``), ranks the cases
    (``uncertainty_case_spearman``), cardiac's conformal EF interval coverage and width, and the uncertainty map(s)
    logged as overlays (``*_uncertainty.png``)."""
    run = section.evaluate_run
    metrics = run.data.metrics if run is not None else {}
    if "uncertainty_error_auc" not in metrics:
        return []
    parts = [f"voxel error AUC {fmt(metrics['uncertainty_error_auc'])} (0.5 = the entropy does not tell wrong "
             "from right voxels)"]
    if "uncertainty_case_spearman" in metrics:
        parts.append(f"Spearman between case score and 1 - {section.key_metric}: "
                     f"{fmt(metrics['uncertainty_case_spearman'])}")
    if "ef_interval_coverage" in metrics:
        parts.append(f"conformal 95 % LV EF intervals hold the truth for {fmt(metrics['ef_interval_coverage'])} of "
                     f"patients (median width {fmt(metrics.get('ef_interval_width'))} pp)")
    lines = ["### Uncertainty", "", "Test-time augmentation, predictive entropy of the mean probability (nats): "
             + "; ".join(parts) + ".", ""]
    for png in section.overlays:
        if "uncertainty" in png.stem:
            lines += [f"![uncertainty map]({png.relative_to(out).as_posix()})", ""]
    return lines


def generate_report(tracking_uri: str, out: str | os.PathLike, experiments: Sequence[str] | None = None) -> Path:
    """Read ``tracking_uri`` and write ``<out>/report.md`` with its plots and overlays; return the report path.

    Args:
        tracking_uri: an MLflow tracking URI (``sqlite:///...``, ``http://host:port``).
        out: the folder to write into (created).
        experiments: only these experiment names (default: every experiment that has runs).

    Raises:
        ValueError: the store has no experiment with runs (or none of the ``experiments`` named).
    """
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri)
    wanted = set(experiments or [])
    sections = []
    for experiment in sorted(client.search_experiments(), key=lambda e: e.name):
        if wanted and experiment.name not in wanted:
            continue
        sections += collect(client, experiment, out)
    if not sections:
        which = f"named {sorted(wanted)} " if wanted else ""
        raise ValueError(f"no experiment {which}with training or evaluate runs in the MLflow store {tracking_uri}")
    report = out / "report.md"
    write_text(report, render(sections, tracking_uri, out))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking_uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI), e.g. sqlite:////abs/mlruns.db")
    parser.add_argument("--out", required=True, help="folder for report.md, its plots and overlays")
    parser.add_argument("--experiments", nargs="*", default=None, help="only these experiment (bundle) names")
    args = parser.parse_args(argv)
    if not args.tracking_uri:
        parser.error("--tracking_uri is required (or set MLFLOW_TRACKING_URI)")
    logging.basicConfig(level=logging.WARNING)
    try:
        report = generate_report(args.tracking_uri, args.out, args.experiments)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"report written to {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
