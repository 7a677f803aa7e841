"""``common.report`` on an MLflow store holding tiny runs, and ``common.overlays.save_overlay_png``."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

EPOCH_LENGTH = 4


def _png_by_matplotlib(path: Path) -> tuple[int, int]:
    """Assert ``path`` is a non-empty PNG that matplotlib wrote; return its size in pixels."""
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert "matplotlib" in image.info.get("Software", "").lower(), image.info
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 0, f"{path} is a blank image"
    return image.size


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store as the bundles write it: a train and an evaluate run ("brain_demo"), a train run only
    ("eye_demo", with MONAI's plain-name validation metric and learning rate beside the recorder's ``val_`` one), and
    a run MONAI's switch logged without the recorder ("monai_only", no ``workflow`` tag: not reported)."""
    import mlflow.entities as me
    from mlflow import MlflowClient

    from common.overlays import save_overlay_png

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)

    brain = client.create_experiment("brain_demo", artifact_location=(root / "artifacts").as_uri())
    train = client.create_run(brain, run_name="train 2025-01-01 10:00:00", tags={"workflow": "train"})
    run_id = train.info.run_id
    metrics = []
    for epoch in (1, 2, 3):
        metrics.append(me.Metric("train_loss_epoch", 1.0 / epoch, now, epoch))
        metrics.append(me.Metric("val_mean_dice", 0.3 * epoch, now, epoch))
        metrics.append(me.Metric("val_hd95", 10.0 / epoch, now, epoch))
        metrics += [me.Metric("train_loss", 1.1 / epoch - 0.01 * i, now, (epoch - 1) * EPOCH_LENGTH + i)
                    for i in range(1, EPOCH_LENGTH + 1)]
    metrics.append(me.Metric("val_best_mean_dice", 0.9, now, 3))
    client.log_batch(run_id, metrics=metrics, params=[me.Param("learning_rate", "0.001"),
                                                      me.Param("epoch_length", str(EPOCH_LENGTH))])
    rng = np.random.default_rng(0)
    image = rng.random((24, 24)).astype(np.float32)
    label = np.zeros((24, 24), np.int64)
    label[6:14, 6:14] = 1
    label[14:18, 10:20] = 2
    overlay = save_overlay_png(image, label, label, root / "src" / "case_a.png", "case a, slice 12",
                               class_names={1: "core", 2: "oedema"})
    client.log_artifact(run_id, overlay, artifact_path="overlays")
    client.set_terminated(run_id, "FINISHED")

    evaluate = client.create_run(brain, run_name="train+evaluate 2025-01-01 10:05:00",
                                 tags={"workflow": "evaluate", "key_metric": "mean_dice"})
    values = {"mean_dice": 0.81, "mean_dice_ci95_low": 0.75, "mean_dice_ci95_high": 0.86, "hd95": 4.5,
              "hd95_ci95_low": 3.0, "hd95_ci95_high": 6.25, "hd95_num_undefined": 1, "num_cases": 8}
    client.log_batch(evaluate.info.run_id, metrics=[me.Metric(k, v, now, 1) for k, v in values.items()])
    client.set_terminated(evaluate.info.run_id, "FINISHED")

    eye = client.create_experiment("eye_demo", artifact_location=(root / "artifacts_eye").as_uri())
    eye_train = client.create_run(eye, run_name="train seed=0 2025-01-01 10:00:00", tags={"workflow": "train"})
    client.log_batch(eye_train.info.run_id,
                     metrics=[me.Metric("train_loss", 1.0 - 0.1 * s, now, s) for s in range(1, 2 * EPOCH_LENGTH + 1)]
                     + [me.Metric("train_loss_epoch", 0.75, now, 1), me.Metric("train_loss_epoch", 0.35, now, 2)]
                     + [me.Metric(name, value, now, epoch) for epoch, value in ((1, 0.5), (2, 0.7))
                        for name in ("dice", "val_dice")] + [me.Metric("lr_group_0", 0.01, now, 1)],
                     params=[me.Param("epoch_length", str(EPOCH_LENGTH))])
    client.set_terminated(eye_train.info.run_id, "FINISHED")

    untagged = client.create_experiment("monai_only", artifact_location=(root / "artifacts_monai").as_uri())
    monai_only = client.create_run(untagged, run_name="run_20250101_100000")  # MONAI's switch alone: no tags
    client.log_batch(monai_only.info.run_id, metrics=[me.Metric("train_loss", 0.5, now, 1)])
    client.set_terminated(monai_only.info.run_id, "FINISHED")
    return uri


def test_report_from_store(store, tmp_path, capsys):
    from common.report import main

    out = tmp_path / "report"
    assert main(["--tracking_uri", store, "--out", str(out)]) == 0
    report = out / "report.md"
    assert str(report) in capsys.readouterr().out
    text = report.read_text()
    assert "## brain_demo" in text and "## eye_demo" in text and "## Default" not in text
    assert "monai_only" not in text  # a run without the recorder's workflow tag is no bundle's
    # the evaluate run's table: key metric first and bold, CI from <name>_ci95_low/high, undefined cases noted
    rows = [line for line in text.splitlines() if line.startswith("| **mean_dice**") or line.startswith("| hd95")]
    assert rows == ["| **mean_dice** | 0.81 | [0.75, 0.86] |", "| hd95 | 4.5 (1 case(s) undefined) | [3, 6.25] |"]
    assert "| [brain_demo](#brain_demo) | mean_dice | 0.81 | [0.75, 0.86] | 8 |" in text
    assert "No evaluate run in this store." in text  # eye_demo has a training run only
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links, text
    for link in links:  # every image link resolves next to the report
        assert (out / link).is_file(), link
    assert "brain_demo/overlays/train_case_a.png" in links
    for name in ("brain_demo", "eye_demo"):
        width, height = _png_by_matplotlib(out / name / "learning_curves.png")
        assert width >= 400 and height >= 300
    _png_by_matplotlib(out / "brain_demo" / "overlays" / "train_case_a.png")


@pytest.fixture(scope="module")
def two_workflow_store(tmp_path_factory):
    """One experiment ("breast_demo") holding two bundle workflows, as breast logs them: classification (an older
    evaluate run, then the latest one, with calibration metrics and a reliability diagram) and, started after it,
    detection (no calibration). Without grouping by ``bundle_workflow`` the newest runs (detection) hide the
    classification's."""
    import mlflow.entities as me
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

    from common.io import save_figure

    root = tmp_path_factory.mktemp("two_workflows")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    start = int(time.time() * 1000) - 60_000
    experiment = client.create_experiment("breast_demo", artifact_location=(root / "artifacts").as_uri())
    declared = "classification,detection"

    def run(minute: int, name: str, workflow: str, flow: str, configs: str, metrics: dict, steps=(1,), **tags):
        created = client.create_run(experiment, start_time=start + minute * 1000, run_name=name,
                                    tags={"workflow": workflow, "bundle_workflow": flow, "bundle_workflows": declared,
                                          "config_files": configs, **tags})
        client.log_batch(created.info.run_id, metrics=[me.Metric(k, v[i] if isinstance(v, tuple) else v, start, step)
                                                       for k, v in metrics.items() for i, step in enumerate(steps)])
        client.set_terminated(created.info.run_id, "FINISHED", end_time=start + minute * 1000 + 30_000)
        return created.info.run_id

    run(0, "train seed=0 cls", "train", "classification", "train",
        {"train_loss_epoch": (0.7, 0.5), "val_auc": (0.6, 0.7)}, steps=(1, 2))
    run(1, "train+evaluate stale", "evaluate", "classification", "train+evaluate",
        {"auc": 0.5, "auc_ci95_low": 0.4, "auc_ci95_high": 0.6, "num_cases": 4}, key_metric="auc")
    cls_eval = run(2, "train+evaluate cls", "evaluate", "classification", "train+evaluate",
                   {"auc": 0.8, "auc_ci95_low": 0.7, "auc_ci95_high": 0.9, "accuracy": 0.75,
                    "accuracy_ci95_low": 0.6, "accuracy_ci95_high": 0.85, "ece": 0.04, "ece_uncalibrated": 0.12,
                    "brier": 0.1, "threshold": 0.31, "num_cases": 10}, key_metric="auc")
    fig = Figure(figsize=(3, 3))
    fig.subplots().plot([0, 0.5, 1], [0, 0.4, 1])
    client.log_artifact(cls_eval, save_figure(fig, root / "src" / "reliability.png"), artifact_path="overlays")
    run(3, "train_detection seed=0 det", "train", "detection", "train_detection",
        {"train_loss_epoch": (0.9, 0.6), "val_froc": (0.4, 0.5)}, steps=(1, 2))
    run(4, "train_detection+evaluate_detection det", "evaluate", "detection", "train_detection+evaluate_detection",
        {"froc": 0.55, "froc_ci95_low": 0.45, "froc_ci95_high": 0.65, "sensitivity_at_1fp": 0.6,
         "sensitivity_at_1fp_ci95_low": 0.5, "sensitivity_at_1fp_ci95_high": 0.7, "num_cases": 12},
        key_metric="froc")
    return uri


def test_report_has_one_section_per_bundle_workflow(two_workflow_store, tmp_path):
    """Both workflows of one experiment get their own section, each pairing its own latest train and evaluate run:
    classification keeps the experiment's name, its metrics and its Calibration section; detection is titled
    "<experiment> — detection" with its FROC table and no calibration."""
    from common.report import generate_report

    report = generate_report(two_workflow_store, tmp_path / "report")
    text = report.read_text()
    assert "(1 experiment(s), 2 workflow sections)" in text
    summary = [line for line in text.splitlines() if line.startswith("| [breast_demo")]
    assert summary == ["| [breast_demo](#breast_demo) | auc | 0.8 | [0.7, 0.9] | 10 | 30 s | train+evaluate cls |",
                       "| [breast_demo — detection](#breast_demo_detection) | froc | 0.55 | [0.45, 0.65] | 12 | 30 s | "
                       "train_detection+evaluate_detection det |"]
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["## Summary", "## breast_demo", "## breast_demo — detection"]
    classification = text[text.index("## breast_demo\n"):text.index("## breast_demo — detection")]
    detection = text[text.index("## breast_demo — detection"):]

    def table(section: str) -> list[str]:
        return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| metric")]

    assert "Training run **train seed=0 cls**" in classification and "Run **train+evaluate cls**" in classification
    assert table(classification) == ["| **auc** | 0.8 | [0.7, 0.9] |", "| accuracy | 0.75 | [0.6, 0.85] |",
                                     "| brier | 0.1 | n/a |", "| ece | 0.04 | n/a |",
                                     "| ece_uncalibrated | 0.12 | n/a |", "| threshold | 0.31 | n/a |"]
    assert ("ECE 0.04 after temperature scaling (0.12 before); Brier score 0.1; labels at threshold 0.31 (chosen on "
            "the validation split).") in classification
    assert "![reliability diagram](breast_demo/overlays/evaluate_reliability.png)" in classification
    assert "![breast_demo learning curves](breast_demo/learning_curves.png)" in classification
    assert "Training run **train_detection seed=0 det**" in detection
    assert "Run **train_detection+evaluate_detection det**" in detection
    assert table(detection) == ["| **froc** | 0.55 | [0.45, 0.65] |", "| sensitivity_at_1fp | 0.6 | [0.5, 0.7] |"]
    assert "### Calibration" not in detection and "reliability" not in detection
    assert "![breast_demo — detection learning curves](breast_demo_detection/learning_curves.png)" in detection
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (report.parent / link).is_file(), link
    source = Path(two_workflow_store.split("///", 1)[1]).parent / "src" / "reliability.png"
    assert (report.parent / "breast_demo" / "overlays" / "evaluate_reliability.png").read_bytes() == source.read_bytes()


def test_workflow_groups_fall_back_to_one_group_without_the_tag():
    """Runs without ``bundle_workflow`` (stores written before the tag) form one group, or join the first declared
    workflow's group when other runs declare the order."""
    from types import SimpleNamespace

    from common.report import workflow_groups

    def run(name: str, **tags):
        return SimpleNamespace(name=name, data=SimpleNamespace(tags=tags))

    old = [run("e", workflow="evaluate"), run("t", workflow="train")]
    assert [(k, [r.name for r in g]) for k, g in workflow_groups(old)] == [(None, ["e", "t"])]
    mixed = [run("det", workflow="evaluate", bundle_workflow="detection", bundle_workflows="classification,detection"),
             run("old", workflow="evaluate"), run("cls", workflow="train", bundle_workflow="classification")]
    assert [(k, [r.name for r in g]) for k, g in workflow_groups(mixed)] == [("classification", ["old", "cls"]),
                                                                              ("detection", ["det"])]


def test_learning_curves_read_from_store(store):
    from mlflow import MlflowClient

    from common.report import learning_curves

    client = MlflowClient(tracking_uri=store)
    brain = client.get_experiment_by_name("brain_demo")
    train = next(r for r in client.search_runs([brain.experiment_id]) if r.data.tags.get("workflow") == "train")
    curves = {c.name: c for c in learning_curves(client, train)}
    assert set(curves) == {"train loss (epoch mean)", "train loss (iteration)", "val_hd95", "val_mean_dice"}
    assert curves["val_mean_dice"].x == [1, 2, 3] and curves["val_mean_dice"].y == pytest.approx([0.3, 0.6, 0.9])
    assert curves["val_hd95"].unit == "mm" and curves["val_mean_dice"].unit == "score (0-1)"
    assert curves["train loss (iteration)"].x[-1] == pytest.approx(3.0)  # iteration 12 / 4 per epoch
    eye = client.get_experiment_by_name("eye_demo")
    eye_train = client.search_runs([eye.experiment_id])[0]
    eye_curves = {c.name: c for c in learning_curves(client, eye_train)}  # MONAI's plain "dice", lr_group_0: no curve
    assert set(eye_curves) == {"train loss (epoch mean)", "train loss (iteration)", "val_dice"}
    assert eye_curves["val_dice"].y == pytest.approx([0.5, 0.7])
    assert eye_curves["train loss (iteration)"].x == pytest.approx([s / EPOCH_LENGTH for s in range(1, 9)])


def test_report_on_empty_store_is_a_clear_error(tmp_path):
    from common.report import generate_report

    with pytest.raises(ValueError, match="no experiment"):
        generate_report(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path / "out")
    assert not (tmp_path / "out" / "report.md").exists()


@pytest.mark.parametrize("kind", ["grey_label", "rgb_no_label", "heatmap"])
def test_save_overlay_png(tmp_path, kind):
    from common.overlays import save_overlay_png

    rng = np.random.default_rng(1)
    label = (rng.random((40, 50)) > 0.7).astype(np.uint8)
    if kind == "grey_label":
        args = (rng.normal(size=(40, 50)), label, label)
    elif kind == "rgb_no_label":
        args = ((rng.random((40, 50, 3)) * 255).astype(np.uint8), None, label)
    else:
        args = (rng.random((3, 40, 50)), label, rng.random((40, 50)))  # channel-first RGB, probability map
    path = tmp_path / f"{kind}.png"
    assert save_overlay_png(*args, path, title=f"{kind} case") == str(path)
    width, _ = _png_by_matplotlib(path)
    panels = 2 if kind == "rgb_no_label" else 3
    assert width == pytest.approx(panels * 320, abs=2)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_save_overlay_png_rejects_mismatched_shapes(tmp_path):
    from common.overlays import save_overlay_png

    with pytest.raises(ValueError, match="does not match the image shape"):
        save_overlay_png(np.zeros((8, 8)), np.zeros((8, 8)), np.zeros((4, 8)), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_calibration_lines_show_ece_threshold_and_the_reliability_diagram(tmp_path):
    from types import SimpleNamespace

    from common.report import BundleSection, calibration_lines

    run = SimpleNamespace(data=SimpleNamespace(metrics={"ece": 0.04, "ece_uncalibrated": 0.12, "brier": 0.1,
                                                        "threshold": 0.31}))
    section = BundleSection("breast", evaluate_run=run,
                            overlays=[tmp_path / "b" / "overlays" / "evaluate_reliability.png",
                                      tmp_path / "b" / "overlays" / "evaluate_roc_curve.png"])
    text = "\n".join(calibration_lines(section, tmp_path))
    assert "ECE 0.04 after temperature scaling (0.12 before)" in text
    assert "labels at threshold 0.31 " in text and "Brier score 0.1;" in text
    assert "![reliability diagram](b/overlays/evaluate_reliability.png)" in text and "roc_curve" not in text
    assert calibration_lines(BundleSection("brain", evaluate_run=SimpleNamespace(
        data=SimpleNamespace(metrics={"mean_dice": 0.8}))), tmp_path) == []


def test_tracked_breast_evaluate_puts_its_reliability_diagram_in_the_report(tiny_pipeline, tmp_path):
    """End to end, as the main job does it: a tracked evaluate run of the breast bundle uploads reliability.png, and
    the report's Calibration subsection shows that very image (not under "Prediction overlays")."""
    from bundle_harness import config_list, run_monai_bundle
    from common.report import generate_report

    shared = tiny_pipeline("breast")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = tmp_path / "eval"
    run_monai_bundle(["run", "--config_file", config_list("breast", "train", "evaluate", "tiny"), "--dataset_dir",
                      shared["data"], "--output_dir", out, "--ckpt_path", shared["out"] / "models" / "model.pt",
                      "--tracking", "mlflow", "--tracking_uri", uri])
    report = generate_report(uri, tmp_path / "report")
    text = report.read_text()
    calibration = text[text.index("### Calibration"):]
    links = re.findall(r"!\[reliability diagram\]\(([^)]+)\)", calibration)
    assert len(links) == 1 and (report.parent / links[0]).read_bytes() == (out / "reliability.png").read_bytes()
    assert "ECE " in calibration and "labels at threshold " in calibration
    prediction_overlays = text[text.index("### Prediction overlays"):] if "### Prediction overlays" in text else ""
    assert "reliability" not in prediction_overlays


def test_uncertainty_lines_show_the_measures_and_the_map(tmp_path):
    from types import SimpleNamespace

    from common.report import BundleSection, render, uncertainty_lines

    run = SimpleNamespace(data=SimpleNamespace(metrics={"dice": 0.7, "uncertainty_error_auc": 0.83,
                                                        "uncertainty_case_spearman": 0.4}),
                          info=SimpleNamespace(run_name="ev", run_id="1"))
    maps = [tmp_path / "e" / "overlays" / "01_test_uncertainty.png", tmp_path / "e" / "overlays" / "01_overlay.png"]
    section = BundleSection("eye", evaluate_run=run, key_metric="dice", overlays=maps)
    text = "\n".join(uncertainty_lines(section, tmp_path))
    assert "voxel error AUC 0.83" in text and "1 - dice: 0.4" in text
    assert "![uncertainty map](e/overlays/01_test_uncertainty.png)" in text and "01_overlay" not in text
    report = render([section], "sqlite:///x.db", tmp_path)
    assert report.count("01_test_uncertainty.png") == 1  # under "Uncertainty", not again under the overlays
    assert uncertainty_lines(BundleSection("brain", evaluate_run=SimpleNamespace(
        data=SimpleNamespace(metrics={"mean_dice": 0.8}))), tmp_path) == []
