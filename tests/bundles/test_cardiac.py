"""Tests of the cardiac bundle (ACDC layout: RV / myocardium / LV at ED and ES, clinical indices).

Whole workflows run in subprocesses (``run_monai_bundle``) on one tiny synthetic dataset and one tiny trained
checkpoint shared through module-scoped fixtures; the bundle's functions are tested in-process through
``import_bundle_module`` / ``bundle_module``.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle_harness import (
    REPO,
    config_list,
    import_bundle_module,
    inference_parser,
    run_monai_bundle,
    seeded_checkpoint,
)
from common.errors import describe
from common.validation import BatchFailure

AREA = "cardiac"
CONFIGS = REPO / "bundles" / AREA / "configs"
TINY = json.loads((CONFIGS / "tiny.json").read_text())
ENV = {"OMP_NUM_THREADS": "1"}  # tiny runs are import-bound; one thread also keeps them fast on a shared CPU
CLINICAL_COLUMNS = ["patient", "lv_edv_ml", "lv_esv_ml", "lv_ef_pct", "rv_edv_ml", "rv_esv_ml", "rv_ef_pct",
                    "myo_mass_g"]


# ----------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_dir(tiny_pipeline) -> Path:
    """A tiny synthetic ACDC dataset (4 training + 3 testing patients, 64x64 in-plane) of the shared run."""
    return tiny_pipeline(AREA)["data"]


@pytest.fixture(scope="module")
def trained(tiny_pipeline) -> Path:
    """Output folder of the shared tiny run: 1 epoch of training, then evaluate on the testing split (read-only)."""
    return tiny_pipeline(AREA)["out"]


@pytest.fixture(scope="module")
def inferred(tiny_pipeline) -> Path:
    """Output folder of the real inference command over the tiny testing split (shared run, read-only)."""
    return tiny_pipeline(AREA)["pred"]


@pytest.fixture(scope="module")
def model_pt(trained) -> str:
    """The tiny trained model of the shared run."""
    return str(trained / "models" / "model.pt")


def _infer(input_dir: Path, output_dir: Path, ckpt_path: str | Path) -> list[dict]:
    """Run inference.json's evaluator (+ tiny.json, CPU) in this interpreter; the clinical.csv rows it wrote."""
    parser = inference_parser(AREA, input_dir, output_dir, ckpt_path, device="$torch.device('cpu')")
    parser.get_parsed_content("evaluator").run()
    return parser.get_parsed_content("handlers")[0].rows


# ----------------------------------------------------------------------------------------------------------- clinical
def test_volume_ef_mass_hand_computed(bundle_module):
    clinical = bundle_module(AREA, "clinical")
    ed = np.zeros((4, 4, 2), np.uint8)
    es = np.zeros((4, 4, 2), np.uint8)
    ed[:2, :, 0] = 3  # 8 LV voxels
    ed[2:, :2, 1] = 2  # 4 MYO voxels
    ed[3, 2:, 1] = 1  # 2 RV voxels
    es[:1, :, 0] = 3  # 4 LV voxels
    es[3, 3, 1] = 1  # 1 RV voxel
    spacing = (1.0, 2.0, 5.0)  # 10 mm^3 = 0.01 ml per voxel
    row = clinical.clinical_indices(ed, es, spacing, "p")
    assert row["lv_edv_ml"] == pytest.approx(0.08) and row["lv_esv_ml"] == pytest.approx(0.04)
    assert row["lv_ef_pct"] == pytest.approx(50.0)
    assert row["rv_edv_ml"] == pytest.approx(0.02) and row["rv_esv_ml"] == pytest.approx(0.01)
    assert row["rv_ef_pct"] == pytest.approx(50.0)
    assert row["myo_mass_g"] == pytest.approx(0.04 * 1.05)
    assert list(row) == CLINICAL_COLUMNS
    assert clinical.ejection_fraction(0.0, 0.0) is None


def test_scanner_response_hand_computed(bundle_module):
    phantom = bundle_module(AREA, "phantom")
    image = np.full((3, 1, 1), 0.25, np.float32)
    x = np.array([-100.0, 0.0, 100.0]).reshape(3, 1, 1)  # mm, a 200 mm field of view: u = -1, 0, 1
    assert phantom.apply_scanner(image, (x, 0 * x), 200.0, "A") is image
    # "B": 0.25 ** 0.7 = 0.37893, times exp(0.35 u) along the first axis
    np.testing.assert_allclose(phantom.apply_scanner(image, (x, 0 * x), 200.0, "B")[:, 0, 0],
                               0.25 ** 0.7 * np.exp(0.35 * np.array([-1.0, 0.0, 1.0])), rtol=1e-6)
    # "C": 0.25 ** 1.4 = 0.14359, times exp(-0.3 u) along the second axis (here all at u = 0)
    np.testing.assert_allclose(phantom.apply_scanner(image, (x, 0 * x), 200.0, "C"), 0.25 ** 1.4, rtol=1e-6)
    with pytest.raises(ValueError, match=r"unknown scanner 'Z': choose one of \['A', 'B', 'C'\]"):
        phantom.write_dataset("/nonexistent/never_written", num_cases=1, scanner="Z")


def test_scanner_shift_changes_contrast_and_bias_not_the_anatomy(bundle_module):
    from scipy import ndimage

    phantom = bundle_module(AREA, "phantom")

    def render(*scanner):
        rng = np.random.default_rng(np.random.SeedSequence([0, 1]))
        p = phantom.draw_patient_parameters(rng)
        return p, *phantom.render_phase(p, "ED", 96, rng, *scanner)

    p, label, a = render()
    assert np.array_equal(a, render("A")[2]) and np.array_equal(render("B")[2], render("B")[2])
    coords = (np.arange(96) + 0.5) * p["fov"] / 96 - p["fov"] / 2
    blood = ndimage.binary_erosion(np.isin(label, (1, 3)), np.ones((3, 3, 1), bool))  # LV and RV, edges left out
    blood &= a > 0.5 * np.median(a[blood])  # without the papillary muscles (myocardial intensity)
    for scanner in ("B", "C"):
        response = phantom.SCANNERS[scanner]
        _, label_s, image = render(scanner)
        assert np.array_equal(label_s, label) and not np.array_equal(image, a)
        # blood (0.95 before the scanner) everywhere: log(S / A) = bias * u + (contrast - 1) log 0.95
        u = np.meshgrid(coords, coords, indexing="ij")[response["axis"]][..., None] / (p["fov"] / 2) + 0 * a
        ratio = np.log(image[blood].astype(float) / a[blood])
        slope, offset = np.polyfit(u[blood], ratio, 1)
        assert slope == pytest.approx(response["bias"], abs=0.05), (scanner, slope)  # B: +0.35; C: -0.3
        # blood/myocardium contrast: (0.95 / 0.28) ** (contrast - 1) times that of scanner A (B 0.69, C 1.63)
        myo = label == 2
        change = (np.median(image[blood]) / np.median(image[myo])) / (np.median(a[blood]) / np.median(a[myo]))
        assert change == pytest.approx((0.95 / 0.28) ** (response["contrast"] - 1), rel=0.1), (scanner, change)


def test_ellipsoid_volume_ef_and_mass(bundle_module):
    """Analytic ellipsoids: V = 4/3 pi a b c; EF from two ellipsoids; mass of a shell at 1.05 g/ml."""
    clinical = bundle_module(AREA, "clinical")
    spacing, shape = (0.5, 0.5, 1.0), (160, 160, 120)
    center = [s * n / 2 for s, n in zip(spacing, shape)]
    ed_axes, es_axes, epi_axes = (30.0, 25.0, 50.0), (24.0, 20.0, 45.0), (38.0, 33.0, 58.0)
    label_ed = np.zeros(shape, np.uint8)
    label_ed[clinical.ellipsoid_mask(shape, spacing, center, epi_axes)] = 2
    label_ed[clinical.ellipsoid_mask(shape, spacing, center, ed_axes)] = 3
    label_es = np.zeros(shape, np.uint8)
    label_es[clinical.ellipsoid_mask(shape, spacing, center, es_axes)] = 3

    def volume(axes):
        return 4.0 / 3.0 * math.pi * axes[0] * axes[1] * axes[2] / 1000.0

    row = clinical.clinical_indices(label_ed, label_es, spacing, "ellipsoid")
    assert row["lv_edv_ml"] == pytest.approx(volume(ed_axes), rel=0.005)  # 157.08 ml
    assert row["lv_esv_ml"] == pytest.approx(volume(es_axes), rel=0.005)  # 90.48 ml
    assert row["lv_ef_pct"] == pytest.approx(100 * (1 - (24 * 20 * 45) / (30 * 25 * 50)), abs=0.3)  # 42.4 %
    assert row["myo_mass_g"] == pytest.approx(1.05 * (volume(epi_axes) - volume(ed_axes)), rel=0.01)
    assert row["rv_edv_ml"] == 0 and row["rv_ef_pct"] is None


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (1.0, -1.0, 5.0), (1.0, 1.0), (1.0, float("nan"), 5.0)])
def test_bad_spacing_rejected(bundle_module, spacing):
    with pytest.raises(ValueError, match="spacing"):
        bundle_module(AREA, "clinical").voxel_volume_ml(spacing)


# ----------------------------------------------------------------------------------------------------------- metrics
def test_patient_row_hand_computed(bundle_module):
    metrics = bundle_module(AREA, "metrics")
    gt = np.zeros((10, 10, 3), np.uint8)
    gt[1:4, 1:4, :] = 1  # RV 27 voxels
    gt[5:9, 5:9, :] = 2
    gt[6:8, 6:8, :] = 3  # LV 12 voxels, MYO 36
    pred = gt.copy()
    pred[6:8, 6:8, 2] = 2  # 4 LV voxels called MYO on the last slice
    row = metrics.patient_row("p", {"ED": gt, "ES": pred}, {"ED": gt, "ES": gt}, (1.0, 1.0, 1.0))
    assert row["dice_rv_ed"] == 1.0 and row["dice_lv_ed"] == 1.0 and row["hd95_lv_ed"] == 0.0
    assert row["dice_lv_es"] == pytest.approx(2 * 8 / (8 + 12))  # 0.8
    assert row["dice_myo_es"] == pytest.approx(2 * 36 / (40 + 36))
    assert row["mean_dice"] == pytest.approx((4 + 0.8 + 72 / 76) / 6)  # RV, MYO, LV at ED + RV at ES are 1
    assert row["lv_ef_pct_gt"] == 0.0 and row["lv_ef_pct_pred"] == pytest.approx(100 * 4 / 12)


def test_ef_agreement_metrics_hand_computed(bundle_module):
    metrics = bundle_module(AREA, "metrics")
    rows = [{"lv_ef_pct_pred": 50.0, "lv_ef_pct_gt": 52.0}, {"lv_ef_pct_pred": 30.0, "lv_ef_pct_gt": 27.0},
            {"lv_ef_pct_pred": None, "lv_ef_pct_gt": 60.0}]
    assert metrics.ef_mae(rows) == pytest.approx(2.5)
    assert metrics.ef_bias(rows) == pytest.approx(0.5)
    assert metrics.ef_corr(rows) == pytest.approx(1.0)  # two points are always perfectly correlated
    assert metrics.ef_corr(rows[:1]) is None


# ----------------------------------------------------------------------------------------------------------- Info.cfg
def test_info_cfg_parsing(bundle_module, tmp_path):
    data = bundle_module(AREA, "data")
    path = tmp_path / "Info.cfg"
    path.write_text("ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
    info = data.parse_info_cfg(path)
    assert info == {"ED": 1, "ES": 12, "Group": "DCM", "Height": "184.0", "NbFrame": 30, "Weight": "95.0"}
    for text, message in [("ED: 1\n", "no 'ES:'"), ("ED: one\nES: 2\n", "ED must be an integer"),
                          ("ED 1\nES: 2\n", "line 1"), ("ED: 0\nES: 2\n", "positive")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            data.parse_info_cfg(path)


def test_one_patient_is_refused_naming_the_training_folder(bundle_module, tmp_path):
    """The bundle passes its ``training`` folder to ``common.splits``: one patient cannot be split, and the last line
    names that folder with the count found and needed (before anything is written to ``output_dir``)."""
    bundle_module(AREA, "phantom").write_dataset(str(tmp_path / "D"), num_cases=1, image_size=32, num_test_cases=1)
    with pytest.raises(ValueError) as error:
        bundle_module(AREA, "data").training_split(str(tmp_path / "D"), str(tmp_path / "out"))
    assert describe(error.value).splitlines()[-1] == (
        f"  - {tmp_path / 'D' / 'training'}: 1 patient(s) found; a train/validation split needs at least 2 patients "
        f"(one held out for validation, one trained on)")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------- phantom
def test_phantom_ground_truth_ef_and_determinism(bundle_module, tiny_dir, tmp_path):
    data, clinical = bundle_module(AREA, "data"), bundle_module(AREA, "clinical")
    efs = []
    for patient_dir in data.list_patients(tiny_dir / "training") + data.list_patients(tiny_dir / "testing"):
        info = data.parse_info_cfg(patient_dir / "Info.cfg")
        ed = nib.load(data.frame_path(patient_dir, info["ED"], gt=True))
        es = nib.load(data.frame_path(patient_dir, info["ES"], gt=True))
        row = clinical.clinical_indices(np.asarray(ed.dataobj), np.asarray(es.dataobj), ed.header.get_zooms())
        assert float(info["EF_LV"]) == pytest.approx(row["lv_ef_pct"], abs=1e-3)
        assert float(info["EF_RV"]) == pytest.approx(row["rv_ef_pct"], abs=1e-3)
        assert 8 <= ed.shape[2] <= 12 and ed.shape[:2] == (TINY["synthetic_image_size"],) * 2
        assert set(np.unique(np.asarray(ed.dataobj))) == {0, 1, 2, 3}
        assert info["ES"] != info["ED"] and row["lv_esv_ml"] < row["lv_edv_ml"]
        efs.append(row["lv_ef_pct"])
    assert min(efs) >= 10 and max(efs) <= 80 and max(efs) - min(efs) > 10  # clinical range, not constant
    phantom = bundle_module(AREA, "phantom")
    phantom.write_dataset(str(tmp_path / "again"), num_cases=1, seed=0, image_size=TINY["synthetic_image_size"],
                          num_test_cases=1)
    for name in ("patient001_frame01.nii.gz", "patient001_frame01_gt.nii.gz"):
        a = nib.load(tiny_dir / "training" / "patient001" / name)
        b = nib.load(tmp_path / "again" / "training" / "patient001" / name)
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, b.affine)
    phantom.write_dataset(str(tmp_path / "other"), num_cases=1, seed=1, image_size=TINY["synthetic_image_size"],
                          num_test_cases=1)
    other = nib.load(tmp_path / "other" / "training" / "patient001" / "patient001_frame01.nii.gz")
    same = nib.load(tiny_dir / "training" / "patient001" / "patient001_frame01.nii.gz")
    assert other.shape != same.shape or not np.array_equal(np.asarray(other.dataobj), np.asarray(same.dataobj))


# ----------------------------------------------------------------------------------------------------------- workflows
def test_train_writes_model_and_split(trained):
    assert (trained / "models" / "model.pt").stat().st_size > 0
    splits = json.loads((trained / "splits.json").read_text())
    assert splits["validation"] and splits["train"] and not set(splits["validation"]) & set(splits["train"])


def test_evaluate_metrics(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["key_metric"] == "mean_dice" and metrics["num_cases"] == TINY["num_test_cases"]
    for name in ("mean_dice", "dice_lv_ed", "dice_myo_es", "ef_mae", "ef_bias"):
        assert name in metrics and f"{name}_ci95" in metrics
    assert 0.0 <= metrics["mean_dice"] <= 1.0
    with open(trained / "metrics_per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == [f"patient{n:03d}" for n in range(5, 5 + TINY["num_test_cases"])]


def test_inference_nifti_geometry_and_clinical_csv(tiny_dir, inferred):
    for patient_dir in sorted((tiny_dir / "testing").iterdir()):
        for image_path in sorted(patient_dir.glob("*_frame??.nii.gz")):
            stem = image_path.name[: -len(".nii.gz")]
            pred = nib.load(inferred / "predictions" / f"{stem}_seg.nii.gz")
            reference = nib.load(image_path)
            assert pred.shape == reference.shape and np.allclose(pred.affine, reference.affine)
            assert np.allclose(pred.header.get_zooms(), reference.header.get_zooms())
            assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 3}
    with open(inferred / "clinical.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == CLINICAL_COLUMNS
    assert [r["patient"] for r in rows] == sorted(p.name for p in (tiny_dir / "testing").iterdir())
    assert not list(inferred.rglob(".*.tmp*"))


# ----------------------------------------------------------------------------------------------------------- bad input
def _break(patient: Path, how: str) -> Path:
    """Damage one patient folder; return the file the error must name."""
    name = patient.name
    info = {k: v for k, v in (line.split(": ") for line in (patient / "Info.cfg").read_text().splitlines())}
    es = patient / f"{name}_frame{int(info['ES']):02d}.nii.gz"
    es_gt = patient / f"{name}_frame{int(info['ES']):02d}_gt.nii.gz"
    if how == "missing_info":
        (patient / "Info.cfg").unlink()
        return patient / "Info.cfg"
    if how == "info_without_es":
        (patient / "Info.cfg").write_text("ED: 1\nNbFrame: 30\n")
        return patient / "Info.cfg"
    if how == "es_frame_not_existing":
        (patient / "Info.cfg").write_text("ED: 1\nES: 27\n")
        return patient / f"{name}_frame27.nii.gz"
    if how == "missing_es_file":
        es.unlink()
        return es
    image = nib.load(es)
    data, zooms = np.asarray(image.dataobj), image.header.get_zooms()
    if how == "zero_spacing":  # nibabel refuses to write pixdim 0, so patch the stored header (pixdim[2] at byte 84)
        raw = bytearray(gzip.decompress(es.read_bytes()))
        raw[84:88] = np.float32(0.0).tobytes()
        es.write_bytes(gzip.compress(bytes(raw)))
        return es
    if how == "nan_image":
        bad = data.astype(np.float32)
        bad[0, 0, 0] = np.nan
        nib.save(nib.Nifti1Image(bad, image.affine), es)
        return es
    if how == "not_nifti":
        es.write_bytes(b"not a nifti file at all")
        return es
    label = nib.load(es_gt)
    ldata = np.asarray(label.dataobj)
    if how == "label_out_of_range":
        ldata = ldata.copy()
        ldata[0, 0, 0] = 7
        nib.save(nib.Nifti1Image(ldata, label.affine, label.header), es_gt)
    elif how == "label_shape_mismatch":
        nib.save(nib.Nifti1Image(ldata[:-2], label.affine, label.header), es_gt)
    elif how == "label_spacing_mismatch":
        header = label.header.copy()
        header.set_zooms((zooms[0] * 1.5, zooms[1], zooms[2]))
        nib.save(nib.Nifti1Image(ldata, np.diag([zooms[0] * 1.5, zooms[1], zooms[2], 1.0]), header), es_gt)
    return es_gt


BAD_INPUTS = [  # (how, checked by: "train" = training data check, "infer" = inference over a folder)
    ("missing_info", "infer"), ("info_without_es", "infer"), ("es_frame_not_existing", "infer"),
    ("missing_es_file", "infer"), ("zero_spacing", "infer"), ("nan_image", "infer"), ("not_nifti", "infer"),
    ("label_out_of_range", "train"), ("label_shape_mismatch", "train"), ("label_spacing_mismatch", "train"),
    ("zero_spacing", "train"), ("missing_info", "train"),
]


@pytest.mark.parametrize("how,stage", BAD_INPUTS)
def test_bad_input_names_patient_and_file(how, stage, tiny_dir, tmp_path, model_pt):
    split = "training" if stage == "train" else "testing"
    dataset = tmp_path / "D"
    shutil.copytree(tiny_dir / split, dataset / split)
    patient = sorted((dataset / split).iterdir())[0]
    bad_file = _break(patient, how)
    out = tmp_path / "out"
    if stage == "train":
        data = import_bundle_module(AREA, "data")
        with pytest.raises(ValueError) as info:
            data.training_split(str(dataset), str(out), 0.2, 0, {"synthetic_dir": str(tmp_path / "unused")})
        assert not out.exists() or not any(out.rglob("*")), "training check left output behind"
    else:
        with pytest.raises(BatchFailure) as info:
            _infer(dataset / split, out, model_pt)
        written = sorted(p.name for p in (out / "predictions").glob("*")) if (out / "predictions").is_dir() else []
        assert not [w for w in written if w.startswith(patient.name)], f"{how}: output of the bad patient: {written}"
        assert len(written) == 2 * (TINY["num_test_cases"] - 1), "the good patients must still be processed"
        assert not list(out.rglob(".*.tmp*"))
    message = str(info.value)
    assert str(bad_file) in message and patient.name in message, message


def test_inference_names_files_it_does_not_predict(tiny_dir, tmp_path, caplog):
    """Issue 13 kind 6: a file beside the patient folders is named in a warning; a hidden one is ignored; the
    patient folders are predicted (random weights: only the listing and the outputs are checked)."""
    import logging

    seeded_checkpoint(AREA, tmp_path / "model.pt")
    dataset = tmp_path / "in"
    patient = sorted((tiny_dir / "testing").iterdir())[0]
    shutil.copytree(patient, dataset / patient.name)
    (dataset / "patient999_frame01.nii.gz").write_bytes(b"outside any patient folder")
    (dataset / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with caplog.at_level(logging.WARNING):
        rows = _infer(dataset, tmp_path / "out", tmp_path / "model.pt")
    assert [r["patient"] for r in rows] == [patient.name]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{dataset / 'patient999_frame01.nii.gz'}: not predicted: a file, not a case folder" in "\n".join(warned)
    assert not any(".DS_Store" in m for m in warned)


def test_missing_checkpoint_is_a_clear_error(tiny_dir, tmp_path):
    with pytest.raises(Exception) as info:
        _infer(tiny_dir / "testing", tmp_path / "out", tmp_path / "nowhere" / "model.pt")
    assert "CheckpointError" in describe(info.value) and "model.pt does not exist: train first" in describe(info.value)
    assert not (tmp_path / "out").exists()


def test_inference_command_exits_nonzero_on_a_bad_patient(tiny_dir, trained, tmp_path):
    dataset = tmp_path / "in"
    shutil.copytree(tiny_dir / "testing", dataset)
    bad = _break(sorted(dataset.iterdir())[1], "es_frame_not_existing")
    proc = run_monai_bundle(["run", "--config_file", config_list(AREA, "inference", "tiny"), "--input_dir", dataset,
                             "--output_dir", tmp_path / "out", "--ckpt_path", trained / "models" / "model.pt"],
                            expect_ok=False, env=ENV)
    assert proc.returncode != 0 and str(bad) in proc.stdout + proc.stderr
    with open(tmp_path / "out" / "clinical.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == TINY["num_test_cases"] - 1


# ------------------------------------------------------------------------------- geometry (issue 13 kind 1)
def _quirky_copy(src: Path, dst: Path) -> Path:
    """A copy of a patient folder whose every NIfTI has the header some conversion tools write: qform identity
    (code 1), sform the real affine (code 1), so pixdim says 1 mm; MONAI's stock reader took the qform."""
    shutil.copytree(src, dst)
    for path in dst.glob("*.nii.gz"):
        image = nib.load(path)
        quirky = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header.copy())
        quirky.set_qform(np.eye(4), code=1)
        quirky.set_sform(image.affine, code=1)
        nib.save(quirky, path)
        assert nib.load(path).header.get_zooms()[:3] == (1.0, 1.0, 1.0)
    return dst


def test_quirky_header_gives_the_same_masks_clinical_csv_and_metric_input(tiny_dir, tmp_path, caplog):
    from monai.bundle import ConfigParser

    patient = min((tiny_dir / "testing").iterdir())
    clean = tmp_path / "clean" / patient.name
    shutil.copytree(patient, clean)
    quirky = _quirky_copy(patient, tmp_path / "quirky" / patient.name)
    # fixed, untrained weights: an LV mask somewhere, so its volume depends on the geometry
    seeded_checkpoint(AREA, tmp_path / "fixed.pt")
    rows = {}
    with caplog.at_level("WARNING", logger="common.geometry"):
        for name in ("clean", "quirky"):
            (rows[name],) = _infer(tmp_path / name, tmp_path / f"out_{name}", tmp_path / "fixed.pt")
    warned = " ".join(r.getMessage() for r in caplog.records if r.name == "common.geometry")
    assert str(quirky) in warned and "1 x 1 x 1 mm" in warned
    assert rows["clean"] == pytest.approx(rows["quirky"], rel=1e-9)
    info = import_bundle_module(AREA, "data").parse_info_cfg(clean / "Info.cfg")
    affine = nib.load(clean / f"{patient.name}_frame{info['ED']:02d}.nii.gz").affine
    masks = {}
    for name in ("clean", "quirky"):
        stem = f"{patient.name}_frame{info['ED']:02d}"
        written = nib.load(tmp_path / f"out_{name}" / "predictions" / f"{stem}_seg.nii.gz")
        np.testing.assert_allclose(written.get_sform(), affine, atol=1e-5)
        np.testing.assert_allclose(written.get_qform(), affine, atol=1e-4)  # one geometry in the written file
        masks[name] = np.asarray(written.dataobj)
    np.testing.assert_array_equal(masks["clean"], masks["quirky"])
    # by hand: LV EDV = LV voxels of the ED mask x the sform's voxel volume (mm^3 -> ml)
    voxel_ml = float(np.prod(np.linalg.norm(affine[:3, :3], axis=0))) / 1000.0
    assert rows["quirky"]["lv_edv_ml"] == pytest.approx(np.count_nonzero(masks["quirky"] == 3) * voxel_ml, rel=1e-6)
    assert rows["quirky"]["lv_edv_ml"] > 0
    # evaluate's input (validate#preprocessing of train.json): the same image tensor and the label's spacing for
    # the clinical volumes in metrics.case_rows
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "tiny.json")])
    pre = parser.get_parsed_content("validate#preprocessing")
    a, b = ({"image": str(root / f"{patient.name}_frame{info['ED']:02d}.nii.gz"),
             "label": str(root / f"{patient.name}_frame{info['ED']:02d}_gt.nii.gz")} for root in (clean, quirky))
    a, b = pre(a), pre(b)
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    np.testing.assert_allclose(b["label"].pixdim.numpy(), np.linalg.norm(affine[:3, :3], axis=0), rtol=1e-6)


