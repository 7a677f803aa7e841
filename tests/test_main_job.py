"""``common.main_job``: bundle selection, the DESIGN.md commands, the summary table, failure handling (no training:
the bundle steps are replaced by tiny Python one-liners that write fake ``metrics.json`` files)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from common import main_job
from common.main_job import AREAS, BundleResult, Step, bundle_steps, format_summary, headline, select_bundles

EYE_METRICS = {"key_metric": "dice", "dice": 0.7812, "dice_ci95": [0.75, 0.81], "auc": 0.9534, "accuracy": 0.9411,
               "sensitivity": 0.71, "specificity": 0.98, "hd95": None, "hd95_num_undefined": 2, "num_cases": 10}


def _fake_bundle(bundles: Path, area: str, configs=("synthesize", "train", "evaluate", "inference"), tiny=None):
    folder = bundles / area / "configs"
    folder.mkdir(parents=True)
    for name in configs:
        (folder / f"{name}.json").write_text("{}")
    if tiny is not None:
        (folder / "tiny.json").write_text(json.dumps(tiny))


def test_select_bundles_skips_missing_and_flags_incomplete(tmp_path):
    _fake_bundle(tmp_path, "eye")
    _fake_bundle(tmp_path, "brain", configs=("train", "synthesize"))
    _fake_bundle(tmp_path, "cardiac")
    selected, others = select_bundles(None, tmp_path)
    assert selected == ["eye", "cardiac"]  # AREAS order
    status = {r.area: (r.status, r.message) for r in others}
    assert status["pathology"][0] == status["breast"][0] == "skipped"
    assert "no bundle folder" in status["pathology"][1]
    assert status["brain"] == ("failed", "incomplete bundle: missing configs/evaluate.json, configs/inference.json")
    selected, others = select_bundles(["cardiac", "pathology"], tmp_path)
    assert selected == ["cardiac"] and [r.area for r in others] == ["pathology"]


def test_bundle_steps_are_the_design_commands(tmp_path):
    bundles = main_job.REPO_ROOT / "bundles"
    steps = bundle_steps("eye", tmp_path, "sqlite:////x/mlruns.db", tiny=False, bundles_dir=bundles, python="py")
    assert [s.name for s in steps] == ["synthesize", "train", "evaluate", "inference"]
    data, runs = str(tmp_path / "data" / "eye"), str(tmp_path / "runs" / "eye")
    run = ["py", "-m", "monai.bundle", "run", "--config_file"]
    tracking = ["--tracking", "mlflow", "--tracking_uri", "sqlite:////x/mlruns.db"]
    assert steps[0].argv == run + ["bundles/eye/configs/synthesize.json", "--dataset_dir", data]
    assert steps[1].argv == run + ["bundles/eye/configs/train.json", "--dataset_dir", data, "--output_dir", runs] \
        + tracking
    assert steps[2].argv == run + ["['bundles/eye/configs/train.json','bundles/eye/configs/evaluate.json']",
                                   "--dataset_dir", data, "--output_dir", runs] + tracking
    assert steps[3].argv[:6] == run + ["bundles/eye/configs/inference.json"]
    assert steps[3].argv[6:] == ["--input_dir", str(Path(data) / main_job.inference_subpath(bundles, "eye"))
                                 if main_job.inference_subpath(bundles, "eye") else data, "--output_dir", runs]
    assert steps[1].log == tmp_path / "logs" / "eye_train.log"


def test_tiny_merges_tiny_json_and_reads_inference_input(tmp_path):
    _fake_bundle(tmp_path, "cardiac", tiny={"harness_inference_input": "testing", "epochs": 1})
    steps = bundle_steps("cardiac", tmp_path / "o", "sqlite:////s.db", tiny=True, bundles_dir=tmp_path, python="py")
    tiny = str(tmp_path / "cardiac" / "configs" / "tiny.json")
    assert steps[0].argv[5] == f"['{tmp_path / 'cardiac' / 'configs' / 'synthesize.json'}','{tiny}']"
    assert steps[2].argv[5].count("'") == 6 and steps[2].argv[5].endswith(f"'{tiny}']")
    assert steps[3].argv[steps[3].argv.index("--input_dir") + 1] == str(tmp_path / "o" / "data" / "cardiac" / "testing")


def test_headline_and_summary_table():
    key, others = headline(EYE_METRICS)
    assert key == "dice 0.781 [0.750, 0.810]"
    assert others == "auc 0.953, accuracy 0.941, sensitivity 0.710, specificity 0.980, ..."
    assert headline(None) == ("-", "-")
    results = [BundleResult("eye", metrics=EYE_METRICS, seconds={"train": 185.0, "inference": 7.4}),
               BundleResult("brain", "failed", "train exited with 1; log x", seconds={"synthesize": 3.0, "train": 9.0}),
               BundleResult("breast", "skipped", "no bundle folder /b yet")]
    table = format_summary(results).splitlines()
    assert [c.strip() for c in table[1].split("|")[1:-1]] == ["bundle", "status", "key metric [95% CI]", "cases",
                                                             "other metrics", "train", "inference"]
    eye = [c.strip() for c in table[3].split("|")[1:-1]]
    assert eye == ["eye", "ok", "dice 0.781 [0.750, 0.810]", "10",
                   "auc 0.953, accuracy 0.941, sensitivity 0.710, specificity 0.980, ...", "3.1 min", "7 s"]
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
                        lambda area, out_, uri, tiny, bdir: _script_steps(out_, area, *plans[area]))
    code = main_job.main(["--bundles", "eye", "breast", "cardiac", "brain", "--out", str(out), "--bundles_dir",
                          str(bundles), "--no_report"])
    printed = capsys.readouterr()
    assert code == 1
    assert "[brain] skipped: no bundle folder" in printed.out
    assert "[breast] train FAILED" in printed.out and "Traceback: boom" in printed.out
    assert "FAILED: breast" in printed.err
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in printed.out.splitlines() if line.startswith("| ") and "bundle" not in line}
    assert rows["eye"][:3] == ["ok", "dice 0.781 [0.750, 0.810]", "10"]
    assert rows["cardiac"][:4] == ["ok", "mean_dice 0.900 [0.850, 0.930]", "8", "ef_mae 4.200"]
    assert rows["breast"][:2] == ["failed", "-"] and rows["breast"][-1] == "-"  # never reached inference
    assert rows["brain"][0] == "skipped"
    assert list(rows) == ["brain", "eye", "breast", "cardiac"]  # AREAS order
    assert (out / "logs" / "eye_train.log").read_text().startswith("$ ")
    assert not (out / "logs" / "breast_evaluate.log").exists()


def test_default_tracking_uri_is_absolute_sqlite(tmp_path):
    assert main_job.default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlruns.db"
    assert main_job.parse_args([]).bundles == list(AREAS)
    with pytest.raises(SystemExit):
        main_job.parse_args(["--bundles", "lung"])
