"""``--uncertainty true`` in the segmentation bundles (brain, cardiac, eye): the named files beside each mask, with
the input's geometry, ``uncertainty.csv``, cardiac's conformal interval columns and its refusal without a usable
calibration. Reuses the session's tiny trained models (``tiny_pipeline``); trains nothing."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bundle_harness import BUNDLES, run_monai_bundle

ENV = {"OMP_NUM_THREADS": "1"}
TTA = 2  # two samples (plain + one flip) keep the subprocesses short; the mechanics do not depend on the number


def _infer(pipeline: dict, input_dir: Path, out: Path, *extra, ckpt: Path | None = None, expect_ok: bool = True):
    """The harness's inference command (no tiny.json: the model's settings come from model.json) with extra args."""
    recorded = json.loads((pipeline["out"] / "models" / "model.json").read_text())
    ids = set(json.loads((BUNDLES / pipeline["area"] / "configs" / "inference.json").read_text()))
    knobs = [a for k, v in pipeline["tiny"].items() if k in ids and k not in recorded
             for a in (f"--{k}", json.dumps(v))]
    return run_monai_bundle(["run", "--config_file", "configs/inference.json", "--input_dir", str(input_dir),
                             "--output_dir", str(out), "--ckpt_path", str(ckpt or pipeline["out"] / "models/model.pt"),
                             *knobs, *extra], cwd=pipeline["copy"], env=ENV, expect_ok=expect_ok)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_without_uncertainty_nothing_new_is_written(tiny_pipeline):
    for area in ("eye",):
        pred = tiny_pipeline(area)["pred"]
        assert not (pred / "uncertainty.csv").exists()
        assert not list((pred / "predictions").glob("*_uncertainty*"))


def test_eye_uncertainty_png_beside_each_mask(tiny_pipeline, tmp_path):
    pipeline = tiny_pipeline("eye")
    images = pipeline["data"] / "test" / "images"
    _infer(pipeline, images, tmp_path / "u", "--uncertainty", "true", "--tta_samples", TTA)
    pred = tmp_path / "u" / "predictions"
    stems = sorted(p.stem for p in images.iterdir() if p.suffix == ".tif")
    assert stems and sorted(p.name for p in pred.glob("*_uncertainty.png")) == [f"{s}_uncertainty.png" for s in stems]
    for stem in stems:
        source = Image.open(images / f"{stem}.tif")
        u = Image.open(pred / f"{stem}_uncertainty.png")
        assert u.size == source.size and u.mode == "L"
        assert u.text["uncertainty_unit"] == "nats"
        assert float(u.text["nats_per_level"]) == pytest.approx(math.log(2) / 255)
        mask = np.asarray(Image.open(pred / f"{stem}_seg.png"))
        assert mask.shape == np.asarray(u).shape
    rows = _rows(tmp_path / "u" / "uncertainty.csv")
    assert [r["case"] for r in rows] == stems
    assert all(r["uncertainty_score"] == "" or 0.0 <= float(r["uncertainty_score"]) <= math.log(2) for r in rows)


def test_brain_uncertainty_nifti_in_the_input_geometry(tiny_pipeline, tmp_path):
    pipeline = tiny_pipeline("brain")
    _infer(pipeline, pipeline["data"], tmp_path / "u", "--uncertainty", "true", "--tta_samples", TTA)
    pred = tmp_path / "u" / "predictions"
    files = sorted(pred.glob("*_uncertainty.nii.gz"))
    assert files and len(files) == len(list(pred.glob("*_pred.nii.gz")))
    for path in files:
        case = path.name[: -len("_uncertainty.nii.gz")]
        t1 = nib.load(str(pipeline["data"] / case / f"{case}_t1.nii.gz"))
        u = nib.load(str(path))
        assert u.shape == t1.shape and u.get_data_dtype() == np.float32
        np.testing.assert_allclose(u.affine, t1.affine, atol=1e-5)
        values = np.asarray(u.dataobj)
        assert values.min() >= 0.0 and values.max() <= 3 * math.log(2) + 1e-5  # three binary entropies
    assert len(_rows(tmp_path / "u" / "uncertainty.csv")) == len(files)


def test_cardiac_refuses_intervals_without_enough_calibration_patients(tiny_pipeline, tmp_path):
    pipeline = tiny_pipeline("cardiac")
    conformal = json.loads((pipeline["out"] / "models" / "model.json").read_text())["conformal"]
    assert conformal["n"] < 19 and set(conformal["q"].values()) == {None}  # 1 validation patient: unbounded
    proc = _infer(pipeline, pipeline["data"] / "testing", tmp_path / "u", "--uncertainty", "true",
                  expect_ok=False)
    last = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()][-1]
    assert proc.returncode != 0 and "model.json" in last and "at least 19" in last
    assert not (tmp_path / "u").exists()


def test_cardiac_clinical_intervals_and_uncertainty_maps(tiny_pipeline, tmp_path):
    pipeline = tiny_pipeline("cardiac")
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(pipeline["out"] / "models" / "model.pt", models / "model.pt")
    settings = json.loads((pipeline["out"] / "models" / "model.json").read_text())
    settings["conformal"].update(n=20, tta_samples=TTA, q={k: 2.0 for k in settings["conformal"]["q"]})
    (models / "model.json").write_text(json.dumps(settings))
    testing = pipeline["data"] / "testing"
    _infer(pipeline, testing, tmp_path / "u", "--uncertainty", "true", "--tta_samples", TTA,
           ckpt=models / "model.pt")
    rows = _rows(tmp_path / "u" / "clinical.csv")
    assert list(rows[0]) == ["patient", "lv_edv_ml", "lv_esv_ml", "lv_ef_pct", "rv_edv_ml", "rv_esv_ml", "rv_ef_pct",
                             "myo_mass_g", "lv_ef_pct_low", "lv_ef_pct_high", "rv_ef_pct_low", "rv_ef_pct_high",
                             "lv_edv_ml_low", "lv_edv_ml_high", "lv_esv_ml_low", "lv_esv_ml_high"]
    for row in rows:
        for key in ("lv_ef_pct", "rv_ef_pct", "lv_edv_ml", "lv_esv_ml"):
            if row[key] == "":
                continue
            low, value, high = float(row[f"{key}_low"]), float(row[key]), float(row[f"{key}_high"])
            assert low < value < high and high - low >= 2 * 2.0 * 1.0 - 1e-3  # q = 2 times at least the 1.0 floor
    assert [r["patient"] for r in _rows(tmp_path / "u" / "uncertainty.csv")] == [r["patient"] for r in rows]
    maps = sorted((tmp_path / "u" / "predictions").glob("*_uncertainty.nii.gz"))
    assert len(maps) == 2 * len(rows)
    for path in maps:
        stem = path.name[: -len("_uncertainty.nii.gz")]
        frame = nib.load(str(next(testing.glob(f"*/{stem}.nii.gz"))))
        u = nib.load(str(path))
        assert u.shape == frame.shape and u.get_data_dtype() == np.float32
        np.testing.assert_allclose(u.affine, frame.affine, atol=1e-5)
        assert float(np.asarray(u.dataobj).max()) <= math.log(4) + 1e-5
    # the same model and inputs without uncertainty (the shared run's plain inference): today's columns only
    plain = pipeline["pred"]
    assert [r["patient"] for r in _rows(plain / "clinical.csv")] == [r["patient"] for r in rows]
    assert len(list(_rows(plain / "clinical.csv"))[0]) == 8
    assert not (plain / "uncertainty.csv").exists()


def test_eye_evaluate_reports_uncertainty_measures_with_cis(tiny_pipeline, tmp_path):
    pipeline = tiny_pipeline("eye")
    run_monai_bundle(["run", "--config_file", "['configs/train.json','configs/evaluate.json','configs/tiny.json']",
                      "--output_dir", str(tmp_path), "--ckpt_path", str(pipeline["out"] / "models" / "model.pt"),
                      "--uncertainty", "true", "--tta_samples", TTA], cwd=pipeline["copy"], env=ENV)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    plain = json.loads((pipeline["out"] / "metrics.json").read_text())
    assert set(metrics) - set(plain) == {"uncertainty_error_auc", "uncertainty_error_auc_ci95",
                                         "uncertainty_case_spearman", "uncertainty_case_spearman_ci95"} | (
        {"uncertainty_error_auc_num_undefined"} if "uncertainty_error_auc_num_undefined" in metrics else set())
    auc, (low, high) = metrics["uncertainty_error_auc"], metrics["uncertainty_error_auc_ci95"]
    assert 0.0 <= low <= auc <= high <= 1.0
    rows = _rows(tmp_path / "metrics_per_case.csv")
    assert {"uncertainty_error_auc", "uncertainty_score"} <= set(rows[0])
    assert len(list((tmp_path / "overlays").glob("*_uncertainty.png"))) == 1
    assert not any("uncertainty" in k for k in plain)  # the shared run (uncertainty false) has none


def test_eye_evaluator_form_identity_when_off_and_rows_when_on(tmp_path):
    """In-process (seeded network, no training): with ``uncertainty`` false the TTA wrapper is the plain inferer, so
    every output is byte for byte that of the bundle's ``SlidingWindowInferer`` alone and nothing new is written;
    with it on, ``write_case`` puts ``<stem>_uncertainty.png`` beside each mask and returns the row that ``finish``
    writes to ``uncertainty.csv``, also when another input fails (``BatchFailure`` after the table is written)."""
    from bundle_harness import inference_evaluator, inference_parser, seeded_checkpoint
    from common.validation import BatchFailure

    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for stem in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(inputs / f"{stem}.png")
    ckpt = seeded_checkpoint("eye", tmp_path / "model.pt")
    small = {"sw_roi_size": [48, 48]}  # one window per image: quick
    plain = inference_parser("eye", inputs, tmp_path / "plain", ckpt, **small)
    plain["inferer"] = plain["inferer"]["inferer"]  # the bundle's own inferer, no wrapper
    plain.get_parsed_content("evaluator").run()
    inference_evaluator("eye", inputs, tmp_path / "off", ckpt, **small).run()
    names = ["a_prob.png", "a_seg.png", "b_prob.png", "b_seg.png"]
    assert sorted(p.name for p in (tmp_path / "off" / "predictions").iterdir()) == names
    for name in names:
        assert (tmp_path / "off" / "predictions" / name).read_bytes() == \
            (tmp_path / "plain" / "predictions" / name).read_bytes(), name
    assert not (tmp_path / "off" / "uncertainty.csv").exists()

    (inputs / "c.png").write_bytes(b"\x89PNG broken")
    on = inference_parser("eye", inputs, tmp_path / "on", ckpt, uncertainty=True, tta_samples=2, **small)
    with pytest.raises(BatchFailure) as info:
        on.get_parsed_content("evaluator").run()
    assert str(inputs / "c.png") in str(info.value)
    collected = on.get_parsed_content("handlers")[0].rows
    rows = _rows(tmp_path / "on" / "uncertainty.csv")
    assert [r["case"] for r in rows] == [r["case"] for r in collected] == ["a", "b"]
    for row, kept in zip(rows, collected):
        assert float(row["uncertainty_score"]) == pytest.approx(kept["uncertainty_score"], rel=1e-5)
        assert 0.0 <= kept["uncertainty_score"] <= math.log(2)
        u = Image.open(tmp_path / "on" / "predictions" / f"{row['case']}_uncertainty.png")
        assert u.size == (48, 40) and u.text["uncertainty_unit"] == "nats"
