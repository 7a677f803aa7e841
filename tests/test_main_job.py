"""``common.main_job``: workflow discovery, the DESIGN.md commands, the summary table, failure handling (no training:
the bundle steps are replaced by tiny Python one-liners that write fake ``metrics.json`` files)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from common import main_job
from common.main_job import BundleResult, Step, bundle_steps, format_summary, headline, select_workflows
from common.workflows import bundle_workflows

EYE_METRICS = {"key_metric": "dice", "dice": 0.7812, "dice_ci95": [0.75, 0.81], "auc": 0.9534, "accuracy": 0.9411,
               "sensitivity": 0.71, "specificity": 0.98, "hd95": None, "hd95_num_undefined": 2, "num_cases": 10}
CONFIGS = ("synthesize", "train", "evaluate", "inference")


def _fake_bundle(bundles: Path, area: str, configs=CONFIGS, tiny=None, workflows=None):
    folder = bundles / area / "configs"
    folder.mkdir(parents=True)
    for name in configs:
        (folder / f"{name}.json").write_text("{}")
    meta = {"version": "0.1.0"} if workflows is None else {"version": "0.1.0", "workflows": workflows}
    (folder / "metadata.json").write_text(json.dumps(meta))
    if tiny is not None:
        (folder / "tiny.json").write_text(json.dumps(tiny))


def test_select_workflows_discovers_bundles_and_flags_incomplete(tmp_path):
    _fake_bundle(tmp_path, "eye")
    _fake_bundle(tmp_path, "brain", configs=("train", "synthesize"))
    _fake_bundle(tmp_path, "cardiac")
    (tmp_path / "notes").mkdir()  # a folder without configs/metadata.json is not a bundle
    selected, others = select_workflows(None, tmp_path)
    assert [(w.area, w.name) for w in selected] == [("cardiac", "default"), ("eye", "default")]
    assert [(r.area, r.status) for r in others] == [("brain", "failed")]
    assert "'evaluate' names missing config file(s) ['evaluate.json']" in others[0].message
    selected, others = select_workflows(["cardiac", "pathology"], tmp_path)
    assert [w.area for w in selected] == ["cardiac"]
    assert [(r.area, r.status) for r in others] == [("pathology", "skipped")]


def test_declared_workflows_are_read_in_order_and_checked(tmp_path):
    _fake_bundle(tmp_path, "breast", configs=CONFIGS + ("train_detection", "inference_detection"), workflows={
        "classification": {"inference_input": ""},
        "detection": {"train": ["train_detection.json"], "evaluate": "train_detection.json",
                      "inference": ["inference_detection.json"], "inference_input": "test"}})
    flows = bundle_workflows(tmp_path / "breast")
    assert [w.name for w in flows] == ["classification", "detection"]
    assert flows[0].configs == {"synthesize": ("synthesize.json",), "train": ("train.json",),
                                "evaluate": ("train.json", "evaluate.json"), "inference": ("inference.json",)}
    assert flows[1].configs["evaluate"] == ("train_detection.json",) and flows[1].inference_input == "test"
    assert main_job.run_name(flows[1], tmp_path) == "breast-detection"
    bad = {"x": {"inference_input": "../elsewhere"}}, {"x": {"train": ["train.yaml"]}}, {"x": {"trian": []}}, []
    for i, workflows in enumerate(bad):
        _fake_bundle(tmp_path / str(i), "eye", workflows=workflows)
        with pytest.raises(ValueError, match="metadata.json"):
            bundle_workflows(tmp_path / str(i) / "eye")


def test_bundle_steps_are_the_design_commands_on_held_out_data(tmp_path):
    bundles = main_job.REPO_ROOT / "bundles"
    (eye,) = bundle_workflows(bundles / "eye")
    steps = bundle_steps(eye, tmp_path, "sqlite:////x/mlruns.db", tiny=False, bundles_dir=bundles, python="py")
    assert [s.name for s in steps] == ["synthesize", "synthesize_heldout", "train", "evaluate", "inference"]
    data, heldout = str(tmp_path / "data" / "eye" / "train"), str(tmp_path / "data" / "eye" / "heldout")
    runs = str(tmp_path / "runs" / "eye")
    run = ["py", "-m", "monai.bundle", "run", "--config_file"]
    tracking = ["--tracking", "mlflow", "--tracking_uri", "sqlite:////x/mlruns.db"]
    assert steps[0].argv == run + ["bundles/eye/configs/synthesize.json", "--dataset_dir", data, "--seed", "0"]
    assert steps[1].argv == run + ["bundles/eye/configs/synthesize.json", "--dataset_dir", heldout, "--seed", "1"]
    assert steps[2].argv == run + ["bundles/eye/configs/train.json", "--dataset_dir", data, "--output_dir", runs] \
        + tracking
    assert steps[3].argv == run + ["['bundles/eye/configs/train.json','bundles/eye/configs/evaluate.json']",
                                   "--dataset_dir", heldout, "--output_dir", runs] + tracking \
        + ["--uncertainty", "true"]  # the eye's evaluate shows the report's uncertainty map (issue 15)
    assert steps[4].argv == run + ["bundles/eye/configs/inference.json", "--input_dir",
                                   str(Path(heldout) / "test" / "images"), "--output_dir", runs]
    assert steps[2].log == tmp_path / "logs" / "eye_train.log"


def test_tiny_merges_tiny_json(tmp_path):
    _fake_bundle(tmp_path, "cardiac", tiny={"epochs": 1}, workflows={"segmentation": {"inference_input": "testing"}})
    (flow,) = bundle_workflows(tmp_path / "cardiac")
    steps = bundle_steps(flow, tmp_path / "o", "sqlite:////s.db", tiny=True, bundles_dir=tmp_path, python="py")
    tiny = str(tmp_path / "cardiac" / "configs" / "tiny.json")
    assert steps[0].argv[5] == f"['{tmp_path / 'cardiac' / 'configs' / 'synthesize.json'}','{tiny}']"
    assert steps[3].argv[5].count("'") == 6 and steps[3].argv[5].endswith(f"'{tiny}']")
    assert steps[4].argv[steps[4].argv.index("--input_dir") + 1] == \
        str(tmp_path / "o" / "data" / "cardiac" / "heldout" / "testing")


def test_headline_and_summary_table():
    key, others = headline(EYE_METRICS)
    assert key == "dice 0.7812 [0.75, 0.81]"  # as the report's row writes it (common.formatting)
    assert others == "auc 0.9534, accuracy 0.9411, sensitivity 0.71, specificity 0.98, ..."
    assert headline(None) == ("-", "-")
    results = [BundleResult("eye", metrics=EYE_METRICS, seconds={"train": 185.0, "inference": 7.4}),
               BundleResult("brain", "failed", "train exited with 1; log x", seconds={"synthesize": 3.0, "train": 9.0}),
               BundleResult("breast", "skipped", "no bundle folder /b yet")]
    table = format_summary(results).splitlines()
    assert [c.strip() for c in table[1].split("|")[1:-1]] == ["bundle", "status", "key metric [95% CI]", "cases",
                                                             "other metrics", "train", "inference"]
    eye = [c.strip() for c in table[3].split("|")[1:-1]]
    assert eye == ["eye", "ok", "dice 0.7812 [0.75, 0.81]", "10",
                   "auc 0.9534, accuracy 0.9411, sensitivity 0.71, specificity 0.98, ...", "3.1 min", "7 s"]
    brain = [c.strip() for c in table[4].split("|")[1:-1]]
    assert brain == ["brain", "failed", "-", "-", "-", "9 s", "-"]
    assert len({len(line) for line in table[:6]}) == 1  # aligned columns
    assert table[-2:] == ["  brain: train exited with 1; log x", "  breast: no bundle folder /b yet"]


def _script_steps(out: Path, area: str, fail_at: str | None, metrics: dict | None) -> list[Step]:
    steps = []
    for name in main_job.STEPS:
        if name == fail_at:
            code = "import sys; print('Traceback: boom'); sys.exit(3)"
        elif name == "evaluate" and metrics is not None:
            target = out / "runs" / area / "metrics.json"
            code = f"import json, pathlib; p = pathlib.Path({str(target)!r}); p.parent.mkdir(parents=True, " \
                   f"exist_ok=True); p.write_text(json.dumps({metrics!r}))"
        else:
            code = "print('Epoch: 1/2, Iter: 1/1 -- train_loss: 0.5'); print('Epoch: 2/2, Iter: 1/1 -- done')"
        steps.append(Step(area, name, [sys.executable, "-c", code], out / "logs" / f"{area}_{name}.log"))
    return steps


def test_main_runs_every_bundle_and_fails_after_all(tmp_path, monkeypatch, capsys):
    bundles = tmp_path / "bundles"
    for area in ("eye", "breast", "cardiac"):
        _fake_bundle(bundles, area)
    out = tmp_path / "out"
    stale = out / "runs" / "cardiac" / "metrics.json"  # from an earlier job: must not be reported
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps(EYE_METRICS))
    plans = {"eye": (None, EYE_METRICS), "breast": ("train", None),
             "cardiac": (None, {"key_metric": "mean_dice", "mean_dice": 0.9, "mean_dice_ci95": [0.85, 0.93],
                                "ef_mae": 4.2, "num_cases": 8})}
    monkeypatch.setattr(main_job, "bundle_steps",
                        lambda flow, out_, uri, tiny, bdir: _script_steps(out_, flow.area, *plans[flow.area]))
    code = main_job.main(["--bundles", "eye", "breast", "cardiac", "brain", "--out", str(out), "--bundles_dir",
                          str(bundles), "--no_report"])
    printed = capsys.readouterr()
    assert code == 1
    assert "[brain] skipped: no bundle folder" in printed.out and "held-out data (seed 1)" in printed.out
    assert "[breast] train FAILED" in printed.out and "Traceback: boom" in printed.out
    assert "FAILED: breast" in printed.err
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in printed.out.splitlines() if line.startswith("| ") and "bundle" not in line}
    assert rows["eye"][:3] == ["ok", "dice 0.7812 [0.75, 0.81]", "10"]
    assert rows["cardiac"][:4] == ["ok", "mean_dice 0.9 [0.85, 0.93]", "8", "ef_mae 4.2"]
    assert rows["breast"][:2] == ["failed", "-"] and rows["breast"][-1] == "-"  # never reached inference
    assert rows["brain"][0] == "skipped"
    assert list(rows) == ["brain", "breast", "cardiac", "eye"]  # by name
    assert (out / "logs" / "eye_train.log").read_text().startswith("$ ")
    assert not (out / "logs" / "breast_evaluate.log").exists()


def test_default_tracking_uri_is_absolute_sqlite(tmp_path):
    assert main_job.default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlruns.db"
    assert main_job.parse_args([]).bundles is None  # every bundle folder
    assert main_job.parse_args(["--bundles", "eye"]).bundles == ["eye"]
    with pytest.raises(SystemExit):
        main_job.parse_args(["--bundles", "lung"])
