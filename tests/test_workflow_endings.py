"""Every bundle, end to end: values typed as text stay text, training always leaves a validated model, and a bad
input ends the run with a last line that names the file and the problem (issue 13, kinds 2, 3 and 5).

Per bundle, in subprocesses run from a scratch folder (relative folder names are what a user types, and python-fire
reads a bare ``1e3`` as the float 1000.0): one evaluate on a copy of the shared tiny data set with one damaged file,
in a folder named ``0x1F``, and one inference on a folder with one damaged file, written to ``1e-4/``. Output is read
as a terminal shows it: stderr into stdout, unbuffered. One bundle (breast, the cheapest to train) also synthesizes
into ``1e3/`` and trains into ``297e7814231/`` (``--key=value``) for 2 epochs with ``--val_interval 3``; that every
bundle's configs use the same two mechanisms (``common.cli`` and ``common.handlers.ValidationHandler``) is checked
on the configs of all five.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle_harness import BUNDLES, REPO

AREAS = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file())
GARBAGE = b"this is not an image file at all\n" * 8


def configs(area: str, *names: str) -> str:
    """``--config_file`` value with absolute paths (the runs below start in a scratch folder)."""
    return "[" + ",".join(f"'{BUNDLES / area / 'configs' / n}.json'" for n in (*names, "tiny")) + "]"


def terminal(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args>`` with stdout and stderr in one stream, as a terminal interleaves them."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "monai.bundle", *map(str, args)], cwd=str(cwd), env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900, check=False)


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _ok(proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        pytest.fail(f"command failed ({proc.returncode}):\n{proc.stdout[-6000:]}")


# --------------------------------------------------------------------------------------------------------------------
# one damaged file per bundle: (inference input folder, damaged file) and (evaluation data copy, damaged file);
# the phrase both runs must end with is the same for the two workflows
# --------------------------------------------------------------------------------------------------------------------
def _truncate(path: Path, keep: int = 300) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _brain(data: Path, target: Path, for_inference: bool) -> Path:
    cases = sorted(p for p in data.iterdir() if p.is_dir())[:2]
    for case in cases:
        shutil.copytree(case, target / case.name)
    bad = target / cases[1].name / f"{cases[1].name}_t2.nii.gz"
    _truncate(bad)
    return bad


def _eye(data: Path, target: Path, for_inference: bool) -> Path:
    if for_inference:
        images = sorted((data / "test" / "images").iterdir())[:2]
        target.mkdir(parents=True)
        for image in images:
            shutil.copy(image, target / image.name)
        bad = target / images[1].name
    else:
        shutil.copytree(data, target)
        bad = sorted((target / "test" / "images").iterdir())[1]
    _truncate(bad, 400)
    return bad


def _cardiac(data: Path, target: Path, for_inference: bool) -> Path:
    if for_inference:
        for patient in sorted((data / "testing").iterdir())[:2]:
            shutil.copytree(patient, target / patient.name)
        patient = sorted(target.iterdir())[1]
    else:
        shutil.copytree(data, target)
        patient = sorted((target / "testing").iterdir())[1]
    bad = min(p for p in patient.glob("*_frame*.nii.gz") if not p.name.endswith("_gt.nii.gz"))
    _truncate(bad)
    return bad


def _pathology(data: Path, target: Path, for_inference: bool) -> Path:
    if for_inference:
        target.mkdir(parents=True)
        shutil.copy(data / "camelyonpatch_level_2_split_test_x.h5", target / "good_x.h5")
        bad = target / "damaged_x.h5"
        shutil.copy(data / "camelyonpatch_level_2_split_test_x.h5", bad)
    else:
        shutil.copytree(data, target)
        bad = target / "camelyonpatch_level_2_split_test_x.h5"
    _truncate(bad, 2000)
    return bad


def _breast(data: Path, target: Path, for_inference: bool) -> Path:
    with open(data / "mass_case_description_test_set.csv", newline="") as f:
        crops = [row["cropped image file path"].strip() for row in csv.DictReader(f)][:2]
    if for_inference:
        target.mkdir(parents=True)
        shutil.copy(data / crops[0], target / "good.dcm")
        bad = target / "damaged.dcm"
    else:
        shutil.copytree(data, target)
        bad = target / crops[1]
    bad.write_bytes(GARBAGE)
    return bad


DAMAGE = {"brain": (_brain, "not a readable NIfTI"), "eye": (_eye, "image is corrupt or not an image (OSError"),
          "cardiac": (_cardiac, "cannot be read as NIfTI"), "pathology": (_pathology, "not a readable HDF5 file"),
          "breast": (_breast, "not a readable DICOM file")}


@pytest.fixture(scope="module", params=AREAS)
def trained(request, tiny_pipeline, tmp_path_factory):
    """The shared tiny run of the bundle (data and model, read-only) and a scratch folder to run from."""
    run = tiny_pipeline(request.param)
    return {"area": request.param, "work": tmp_path_factory.mktemp(f"endings_{request.param}"), "data": run["data"],
            "ckpt": run["out"] / "models" / "model.pt"}


@pytest.fixture(scope="module")
def typed_training(tmp_path_factory):
    area = "breast"
    work = tmp_path_factory.mktemp(f"typed_{area}")
    _ok(terminal(["run", "--config_file", configs(area, "synthesize"), "--dataset_dir", "1e3", "--seed", 0], work))
    train = terminal(["run", "--config_file", configs(area, "train"), "--dataset_dir=1e3", "--output_dir=297e7814231",
                      "--epochs", 2, "--val_interval", 3], work)
    _ok(train)
    return {"area": area, "work": work, "data": work / "1e3", "out": work / "297e7814231", "train": train}


@pytest.mark.parametrize("area", AREAS)
def test_every_config_restores_typed_text_and_validates_at_the_last_epoch(area):
    """The two mechanisms pinned end to end on breast below are in every workflow config of every bundle."""
    for config in sorted((BUNDLES / area / "configs").glob("*.json")):
        doc = json.loads(config.read_text())
        if "imports" in doc:
            assert "$from common.cli import command_line" in doc["imports"], f"{config}: no common.cli hook"
    train = (BUNDLES / area / "configs" / "train.json").read_text()
    assert '"_target_": "common.handlers.ValidationHandler"' in train
    assert '"_target_": "ValidationHandler"' not in train, "MONAI's handler skips the last epoch below val_interval"


def test_folder_names_arrive_as_typed(typed_training):
    work = typed_training["work"]
    assert (typed_training["data"]).is_dir() and (typed_training["out"] / "models" / "model.pt").is_file()
    assert not (work / "1000.0").exists() and not (work / "inf").exists()
    assert "{'dataset_dir': '1e3', 'output_dir': '297e7814231'}" in typed_training["train"].stdout


def test_epochs_below_val_interval_validate_once_at_the_last_epoch(typed_training):
    """--epochs 2 --val_interval 3: MONAI alone validates never and writes no model.pt; here epoch 2 is validated
    (and only it) and its network is the saved best model."""
    models = typed_training["out"] / "models"
    first = torch.load(models / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)
    last = torch.load(models / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=False)
    assert first["best_metric_epoch"] == -1, "no validation after epoch 1"
    assert last["best_metric_epoch"] == 2, "validation after the last epoch"
    best = torch.load(models / "model.pt", map_location="cpu")
    assert best.keys() == last["network"].keys()
    assert all(torch.equal(best[k], last["network"][k]) for k in best)


def test_bad_inference_input_ends_with_file_and_reason(trained, tmp_path):
    area, work = trained["area"], trained["work"]
    damage, phrase = DAMAGE[area]
    bad = damage(trained["data"], work / "bad_input", True)
    proc = terminal(["run", "--config_file", configs(area, "inference"), "--input_dir", "bad_input",
                     "--output_dir", "1e-4", "--ckpt_path", trained["ckpt"]], work)
    assert proc.returncode != 0
    line = last_line(proc)
    assert bad.name in line and phrase in line, proc.stdout[-3000:]
    assert (work / "1e-4").is_dir() and not (work / "0.0001").exists()


def test_bad_evaluation_data_ends_with_file_and_the_same_reason(trained):
    area, work = trained["area"], trained["work"]
    damage, phrase = DAMAGE[area]
    bad = damage(trained["data"], work / "0x1F", False)  # fire reads 0x1F as the int 31
    # breast skips an unreadable CSV row by default (named in a warning, counted in metrics.json): ask for strictness
    strict = ["--strict_rows", "true"] if area == "breast" else []
    proc = terminal(["run", "--config_file", configs(area, "train", "evaluate"), "--dataset_dir", "0x1F",
                     "--output_dir", "eval_out", "--ckpt_path", trained["ckpt"], *strict], work)
    assert proc.returncode != 0
    line = last_line(proc)
    assert bad.name in line and phrase in line, proc.stdout[-3000:]
    assert "Failed to instantiate" not in line and "applying transform" not in line


def test_breast_undecodable_dicom_gives_the_same_reason_to_evaluate_and_inference(tmp_path, monkeypatch):
    """A compressed transfer syntax without a decoder: the dataset check (evaluate) and the reader (inference) raise
    one message, from one function (``scripts.dicom.check_decodable``)."""
    import numpy as np
    import pydicom
    import pydicom.pixels
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    from bundle_harness import import_bundle_module
    from common.validation import Problems

    dicom = import_bundle_module("breast", "dicom")
    data = import_bundle_module("breast", "data")
    path = tmp_path / "crop.dcm"
    dicom.write_dicom(path, np.full((8, 6), 100.0, np.float32))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless  # the header says so; no decoder (below) reads it
    ds.PixelData = encapsulate([bytes(ds.PixelData)])
    ds.save_as(path, enforce_file_format=True)

    class _NoDecoder:
        is_available = False
        missing_dependencies = ["the JPEG-LS plugin"]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: _NoDecoder())
    problems = Problems("test")
    assert data.check_dicom(path, problems, "row 2") is None
    with pytest.raises(dicom.DicomError) as err:
        dicom.read_dicom(path)
    assert problems.items == [("row 2", str(err.value))]
    assert str(err.value).startswith(f"{path}: transfer syntax JPEG-LS Lossless")
    assert "the JPEG-LS plugin" in str(err.value)
