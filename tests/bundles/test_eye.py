"""Tests of the eye bundle (retinal vessel segmentation, DRIVE layout).

Whole workflows run in subprocesses (``run_bundle``) on one tiny synthetic dataset and one tiny trained checkpoint
shared through module-scoped fixtures; the bundle's functions are tested in-process through ``bundle_module``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

from bundle_harness import REPO, SCHEMA, config_list, import_bundle_module, inference_evaluator, seeded_checkpoint

AREA = "eye"
CONFIGS = REPO / "bundles" / AREA / "configs"
HEIGHT, WIDTH = 96, 80  # tiny.json: non-square on purpose, a swapped axis shows up as a wrong output size
TINY = json.loads((REPO / "bundles" / AREA / "configs" / "tiny.json").read_text())


# ----------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_dir(tiny_pipeline) -> Path:
    """A tiny synthetic DRIVE dataset written by the real synthesize command (shared, read-only)."""
    root = tiny_pipeline(AREA)["data"]
    assert tuple(TINY["synthetic_image_size"]) == (HEIGHT, WIDTH)
    return root


@pytest.fixture(scope="module")
def trained(tiny_pipeline) -> Path:
    """Output folder of the shared tiny run: 1 epoch of training, then evaluate on ``tiny_dir`` (read-only)."""
    return tiny_pipeline(AREA)["out"]


@pytest.fixture
def copy_of(tiny_dir, tmp_path):
    """A fresh, writable copy of the tiny dataset."""
    target = tmp_path / "D"
    shutil.copytree(tiny_dir, target)
    return target


# ----------------------------------------------------------------------------------------------------------- metrics
def test_fov_metrics_hand_computed(bundle_module):
    metrics = bundle_module(AREA, "metrics")
    label = np.array([[1, 1, 0, 0], [0, 1, 0, 1]])
    prob = np.array([[0.9, 0.3, 0.6, 0.9], [0.1, 0.8, 0.2, 0.0]])
    fov = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])  # pixel (0, 3) is a false positive outside the FOV: ignored
    # inside the FOV: TP = 2 (0.9, 0.8), FN = 2 (0.3, 0.0), FP = 1 (0.6), TN = 2 (0.1, 0.2)
    # AUC: positives {0.9, 0.3, 0.8, 0.0} vs negatives {0.6, 0.1, 0.2}: 3 + 2 + 3 + 0 = 8 of 12 pairs
    m = metrics.fov_metrics(prob, label, fov)
    assert m["dice"] == pytest.approx(4 / 7)
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["auc"] == pytest.approx(8 / 12)
    # the same prediction scored over the whole image counts the outside pixel as a false positive
    whole = metrics.fov_metrics(prob, label, np.ones_like(fov))
    assert whole["dice"] == pytest.approx(4 / 8) and whole["specificity"] == pytest.approx(2 / 4)


def test_fov_metrics_undefined_and_errors(bundle_module):
    metrics = bundle_module(AREA, "metrics")
    no_vessel = metrics.fov_metrics(np.zeros((2, 2)), np.zeros((2, 2)), np.ones((2, 2)))
    assert no_vessel["sensitivity"] is None and no_vessel["auc"] is None and no_vessel["dice"] is None
    assert no_vessel["specificity"] == 1.0 and no_vessel["accuracy"] == 1.0
    with pytest.raises(ValueError, match="FOV mask is empty"):
        metrics.fov_metrics(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="differ in size"):
        metrics.fov_metrics(np.zeros((2, 2)), np.zeros((2, 3)), np.ones((2, 2)))


def test_fov_masking_transform(bundle_module):
    transforms = bundle_module(AREA, "transforms")
    fov = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    out = transforms.MaskOutsideFOVd(["pred", "prob"])({"pred": torch.ones(1, 2, 2), "prob": torch.full((1, 2, 2), 0.7),
                                                        "fov": fov})
    assert out["pred"].tolist() == [[[1.0, 0.0], [1.0, 1.0]]]
    assert out["prob"][0, 0, 1] == 0 and out["prob"][0, 1, 1] == pytest.approx(0.7)


# ----------------------------------------------------------------------------------------------------------- phantom
def test_phantom_deterministic_by_seed(bundle_module):
    phantom = bundle_module(AREA, "phantom")
    a = phantom.synth_fundus(np.random.default_rng(3), 80, 72)
    b = phantom.synth_fundus(np.random.default_rng(3), 80, 72)
    c = phantom.synth_fundus(np.random.default_rng(4), 80, 72)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    rgb, vessel, fov = a
    assert rgb.shape == (80, 72, 3) and rgb.dtype == np.uint8
    assert set(np.unique(vessel)) <= {0, 255} and set(np.unique(fov)) == {0, 255}
    assert not np.any((vessel > 0) & (fov == 0)), "vessels must lie inside the FOV"
    with pytest.raises(ValueError, match="at least 32"):
        phantom.synth_fundus(np.random.default_rng(0), 16, 64)


def test_scanner_response_hand_computed(bundle_module):
    phantom = bundle_module(AREA, "phantom")
    image = np.full((1, 2, 3), 0.25)
    rho = np.array([[0.0, 1.0]])  # the image centre and the FOV edge
    assert phantom.apply_scanner(image, rho, "A") is image
    # "B": (1 - 0.3 rho^2) * gain * 0.25, to the power 0.8; at the edge the light is 0.7
    b = phantom.apply_scanner(image, rho, "B")
    np.testing.assert_allclose(b[0, 0], (0.25 * np.array([0.85, 1.05, 1.3])) ** 0.8, rtol=1e-9)
    np.testing.assert_allclose(b[0, 1], (0.7 * 0.25 * np.array([0.85, 1.05, 1.3])) ** 0.8, rtol=1e-9)
    # "C": exposure 0.8, no extra vignetting, gamma 1.3
    np.testing.assert_allclose(phantom.apply_scanner(image, rho, "C")[0, 1],
                               (0.8 * 0.25 * np.array([1.15, 0.9, 0.75])) ** 1.3, rtol=1e-9)
    with pytest.raises(ValueError, match=r"unknown scanner 'Z': choose one of \['A', 'B', 'C'\]"):
        phantom.write_dataset("/nonexistent/never_written", num_cases=1, scanner="Z")


def test_scanner_shift_changes_the_camera_not_the_retina(bundle_module):
    phantom = bundle_module(AREA, "phantom")
    height, width = 160, 150

    def photo(*scanner):
        return phantom.synth_fundus(np.random.default_rng([0, 0, 1]), height, width, *scanner)

    rgb_a, vessel, fov = photo()
    assert np.array_equal(photo("A")[0], rgb_a) and np.array_equal(photo("B")[0], photo("B")[0])
    yy, xx = np.mgrid[0:height, 0:width]
    rho = np.hypot(yy - (height - 1) / 2, xx - (width - 1) / 2) / (0.478 * min(height, width))
    a = rgb_a / 255.0
    for scanner in ("B", "C"):
        r = phantom.SCANNERS[scanner]
        rgb, vessel_s, fov_s = photo(scanner)
        assert np.array_equal(vessel_s, vessel) and np.array_equal(fov_s, fov) and not np.array_equal(rgb, rgb_a)
        # red channel (bright, so noise and 8-bit rounding matter least), central FOV: by the formula
        # log S = gamma log A + gamma log(1 - vignette rho^2) + gamma log(exposure gain_R)
        s = rgb / 255.0
        px = (fov > 0) & (rho < 0.5) & (a[..., 0] > 0.08) & (s[..., 0] > 0.02)
        design = np.stack([np.log(a[..., 0][px]), np.log(1 - r["vignette"] * rho[px] ** 2), np.ones(px.sum())], 1)
        gamma, _, offset = np.linalg.lstsq(design, np.log(s[..., 0][px]), rcond=None)[0]
        assert gamma == pytest.approx(r["gamma"], abs=0.05), (scanner, gamma)
        assert offset == pytest.approx(r["gamma"] * np.log(r["exposure"] * r["gains"][0]), abs=0.05), scanner
    # white balance: B is cooler (less red per blue), C warmer; B's vignetting darkens the FOV edge against the centre
    inside = (fov > 0) & (rho < 0.8)

    def red_over_blue(rgb):
        return np.median(rgb[..., 0][inside]) / np.median(rgb[..., 2][inside])

    assert red_over_blue(photo("B")[0]) < red_over_blue(rgb_a) < red_over_blue(photo("C")[0])
    centre, edge = (fov > 0) & (rho < 0.3), (fov > 0) & (rho > 0.7) & (rho < 0.9)

    def centre_over_edge(rgb):
        return rgb[..., 1][centre].mean() / rgb[..., 1][edge].mean()

    # about ((1 - 0.3 * 0.2^2) / (1 - 0.3 * 0.8^2)) ** 0.8 = 1.17 more than A's
    assert 1.1 < centre_over_edge(photo("B")[0]) / centre_over_edge(rgb_a) < 1.25


def test_phantom_layout_and_files(bundle_module, tmp_path):
    phantom = bundle_module(AREA, "phantom")
    counts = phantom.write_dataset(str(tmp_path / "a"), num_cases=3, seed=7, height=64, width=56)
    assert counts == {"training": 3, "test": 8}
    names = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert "training/images/21_training.tif" in names and "training/1st_manual/23_manual1.gif" in names
    assert "training/mask/22_training_mask.gif" in names and "test/images/08_test.tif" in names
    assert "test/mask/01_test_mask.gif" in names and "test/1st_manual/08_manual1.gif" in names
    assert len(names) == 3 * 11 and not any(Path(n).name.startswith(".") for n in names)  # no temporary files
    with Image.open(tmp_path / "a/training/images/21_training.tif") as im:
        assert im.mode == "RGB" and im.size == (56, 64)  # PIL size is (width, height)
    phantom.write_dataset(str(tmp_path / "b"), num_cases=3, seed=7, height=64, width=56)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    vessel = np.asarray(Image.open(tmp_path / "a/training/1st_manual/21_manual1.gif").convert("L"))
    fov = np.asarray(Image.open(tmp_path / "a/training/mask/21_training_mask.gif").convert("L"))
    assert 0.02 < (vessel > 0).sum() / (fov > 0).sum() < 0.3


# ----------------------------------------------------------------------------------------------------------- transforms
def test_load_fundus_shapes_and_fov_estimate(bundle_module, tiny_dir):
    transforms = bundle_module(AREA, "transforms")
    data = bundle_module(AREA, "data")
    case = data.list_split(tiny_dir, "training")[0]
    loaded = transforms.LoadFundusd()(dict(case))
    assert loaded["image"].shape == (3, HEIGHT, WIDTH) and loaded["label"].shape == (1, HEIGHT, WIDTH)
    assert float(loaded["image"].max()) <= 1.0 and set(torch.unique(loaded["label"]).tolist()) <= {0.0, 1.0}
    estimated = transforms.LoadFundusd()({**case, "fov": ""})["fov"]
    inter = float((estimated * loaded["fov"]).sum())
    union = float(((estimated + loaded["fov"]) > 0).sum())
    assert inter / union > 0.9, "the estimated FOV should match the true one"
    clahe = transforms.ClaheGreend("image", fov_key="fov")(loaded)["image"]
    torch.testing.assert_close(clahe[0], loaded["image"][0] * loaded["fov"][0])
    assert not torch.allclose(clahe[1], loaded["image"][1] * loaded["fov"][0])


def test_grayscale_image_is_replicated(bundle_module, copy_of):
    transforms = bundle_module(AREA, "transforms")
    data = bundle_module(AREA, "data")
    image = copy_of / "training/images/21_training.tif"
    Image.open(image).convert("L").save(image)
    data.check_dataset(str(copy_of), min_cases=2)  # handled: no error
    loaded = transforms.LoadFundusd()(dict(data.list_split(copy_of, "training")[0]))
    assert loaded["image"].shape == (3, HEIGHT, WIDTH)
    torch.testing.assert_close(loaded["image"][0], loaded["image"][2])


def test_missing_fov_mask_falls_back_to_estimate(bundle_module, copy_of):
    data = bundle_module(AREA, "data")
    (copy_of / "training/mask/21_training_mask.gif").unlink()
    data.check_dataset(str(copy_of), min_cases=2)
    assert data.list_split(copy_of, "training")[0]["fov"] == ""


# ----------------------------------------------------------------------------------------------------------- bad input
def _resize(path: Path) -> None:
    with Image.open(path) as im:
        im.convert("L").resize((WIDTH + 8, HEIGHT)).save(path, format="GIF")


def _grey_levels(path: Path) -> None:
    arr = np.asarray(Image.open(path).convert("L")).copy()
    arr[:4, :4] = 128
    Image.fromarray(arr).save(path, format="GIF")


BAD_INPUTS = [  # (id, mutation of the copied dataset, file the message must name, words in the message)
    ("manual_size", lambda d: _resize(d / "training/1st_manual/21_manual1.gif"), "training/1st_manual/21_manual1.gif",
     "but the image"),
    ("fov_size", lambda d: _resize(d / "training/mask/22_training_mask.gif"), "training/mask/22_training_mask.gif",
     "but the image"),
    ("manual_not_binary", lambda d: _grey_levels(d / "training/1st_manual/23_manual1.gif"),
     "training/1st_manual/23_manual1.gif", "not binary"),
    ("fov_not_binary", lambda d: _grey_levels(d / "training/mask/21_training_mask.gif"),
     "training/mask/21_training_mask.gif", "not binary"),
    ("corrupt_image", lambda d: (d / "training/images/22_training.tif").write_bytes(b"II*\x00garbage" * 10),
     "training/images/22_training.tif", "corrupt"),
    ("corrupt_manual", lambda d: (d / "training/1st_manual/22_manual1.gif").write_bytes(b"GIF89a\x00\x01"),
     "training/1st_manual/22_manual1.gif", "corrupt"),
    ("empty_image_file", lambda d: (d / "training/images/23_training.tif").write_bytes(b""),
     "training/images/23_training.tif", "empty"),
    ("missing_manual", lambda d: (d / "training/1st_manual/24_manual1.gif").unlink(),
     "training/1st_manual/24_manual1.gif", "missing"),
    ("empty_split", lambda d: [p.unlink() for p in (d / "training/images").iterdir()], "training/images",
     "0 image(s)"),
    ("no_split_folder", lambda d: shutil.rmtree(d / "training"), "training/images", "no images/ folder"),
    ("empty_fov", lambda d: Image.fromarray(np.zeros((HEIGHT, WIDTH), np.uint8)).save(
        d / "training/mask/24_training_mask.gif", format="GIF"), "training/mask/24_training_mask.gif", "empty"),
]


@pytest.mark.parametrize("mutate,named,words", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_training_data_is_reported(bundle_module, copy_of, tmp_path, mutate, named, words):
    data = bundle_module(AREA, "data")
    validation = sys.modules["common.validation"]
    mutate(copy_of)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(validation.DatasetError) as info:
        data.training_split(str(copy_of), synthetic={"synthetic_dir": str(tmp_path / "default")}, min_size=(48, 48))
    message = str(info.value)
    assert str(copy_of / named) in message and words in message, message
    assert sorted(p for p in tmp_path.rglob("*")) == before, "validation must write nothing"


def test_all_problems_reported_at_once(bundle_module, copy_of):
    data = bundle_module(AREA, "data")
    _grey_levels(copy_of / "training/1st_manual/21_manual1.gif")
    (copy_of / "training/images/22_training.tif").write_bytes(b"not a tiff")
    with pytest.raises(ValueError) as info:
        data.check_dataset(str(copy_of))
    assert "2 problem(s)" in str(info.value)
    with pytest.raises(ValueError, match="does not exist"):
        data.check_dataset(str(copy_of / "nowhere"))


def test_training_on_bad_data_fails_before_compute(run_bundle, copy_of, tmp_path):
    (copy_of / "training/images/21_training.tif").write_bytes(b"II*\x00broken")
    out = tmp_path / "out"
    proc = run_bundle(["run", "--config_file", config_list(AREA, "train", "tiny"), "--dataset_dir", copy_of,
                       "--output_dir", out], expect_ok=False)
    assert proc.returncode != 0
    assert str(copy_of / "training/images/21_training.tif") in proc.stdout + proc.stderr
    assert not out.exists(), "nothing may be written when the data are bad"


def _tiny_network():
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=3, out_channels=1, channels=(8, 16, 32, 64), strides=(2, 2, 2),
                num_res_units=2, norm="batch")


def test_inference_bad_inputs(bundle_module, tiny_dir, tmp_path):
    """inference.json's evaluator: a missing checkpoint and an empty folder are clear errors before anything is
    written; a bad image is named at the end, after the good ones were written (and no other file)."""
    from common.errors import describe
    from common.validation import BatchFailure

    ckpt = seeded_checkpoint(AREA, tmp_path / "model.pt")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("01_test", "02_test"):
        shutil.copy(tiny_dir / f"test/images/{name}.tif", inputs / f"{name}.tif")
    (inputs / "03_bad.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        inference_evaluator(AREA, inputs, out, tmp_path / "missing.pt")
    assert re.search("checkpoint .*missing.pt does not exist", describe(info.value)), describe(info.value)
    assert not out.exists()
    with pytest.raises(Exception) as info:
        inference_evaluator(AREA, tmp_path / "empty", out, ckpt)
    assert "DatasetError" in describe(info.value) and "does not exist" in describe(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception) as info:
        inference_evaluator(AREA, tmp_path / "empty", out, ckpt)
    assert "holds no fundus image" in describe(info.value)
    with pytest.raises(BatchFailure) as info:  # the good images are done, the bad one is named
        inference_evaluator(AREA, inputs, out, ckpt).run()
    assert str(inputs / "03_bad.png") in str(info.value) and "1 input(s) failed (2 processed)" in str(info.value)
    assert sorted(p.name for p in (out / "predictions").iterdir()) == [
        "01_test_prob.png", "01_test_seg.png", "02_test_prob.png", "02_test_seg.png"]


def test_every_input_file_is_predicted_or_named(bundle_module, tiny_dir, tmp_path, caplog):
    """Issue 13 kind 6: a STARE .ppm (and any format Pillow reads, any case) is predicted; everything else in the
    folder is named in a warning with the reason; hidden files are ignored silently; FOV masks are used."""
    import logging

    inference = bundle_module(AREA, "inference")

    rgb = np.asarray(Image.open(tiny_dir / "test/images/01_test.tif").convert("RGB"))
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(rgb).save(inputs / "im0001.ppm")  # STARE
    Image.fromarray(rgb[..., 1]).save(inputs / "im0002.PGM")  # grey, upper case
    Image.fromarray(rgb).save(inputs / "im0003.bmp")
    Image.fromarray(rgb).save(inputs / "Image_01L.JPG", format="JPEG")  # CHASE, upper case
    Image.fromarray(rgb[..., 0]).save(inputs / "im0001.ah.ppm")  # STARE annotation
    Image.fromarray(rgb[..., 0]).save(inputs / "Image_01L_1stHO.png")  # CHASE annotation
    Image.fromarray(np.full(rgb.shape[:2], 255, np.uint8)).save(inputs / "im0003_mask.gif")  # FOV of im0003
    (inputs / "notes.txt").write_text("acquired 2024")
    (inputs / "im0004.ppm.gz").write_bytes(b"\x1f\x8b")
    (inputs / "manual").mkdir()
    (inputs / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with caplog.at_level(logging.INFO):
        found = inference.list_inputs(str(inputs))
    assert [p.name for p in found] == ["Image_01L.JPG", "im0001.ppm", "im0002.PGM", "im0003.bmp"]
    warned = {r.getMessage().split(":")[0] for r in caplog.records if r.levelno == logging.WARNING}
    assert {str(inputs / n) for n in ("Image_01L_1stHO.png", "im0001.ah.ppm", "notes.txt", "im0004.ppm.gz",
                                      "manual")} <= warned
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert ".DS_Store" not in messages and "gunzip" in messages and "vessel annotation" in messages
    assert f"{inputs / 'im0003_mask.gif'}: FOV mask of im0003" in messages
    assert inference.find_fov(inputs / "im0003.bmp") == str(inputs / "im0003_mask.gif")

    for extra in ("im0002.PGM", "im0003.bmp", "Image_01L.JPG"):
        (inputs / extra).unlink()
    out = tmp_path / "out"
    inference_evaluator(AREA, inputs, out, seeded_checkpoint(AREA, tmp_path / "model.pt")).run()
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["im0001_prob.png", "im0001_seg.png"]
    assert np.asarray(Image.open(out / "predictions" / "im0001_seg.png")).shape == rgb.shape[:2]


# ----------------------------------------------------------------------------------------------------------- workflows
def test_train_outputs(trained):
    assert (trained / "models" / "model.pt").is_file()
    assert list((trained / "models").glob("checkpoint_epoch=*.pt"))
    split = json.loads((trained / "splits.json").read_text())
    assert len(split["train"]) + len(split["validation"]) == 4 and len(split["validation"]) >= 1
    assert not set(split["train"]) & set(split["validation"])


def test_evaluate_writes_fov_metrics(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["key_metric"] == "dice" and metrics["num_cases"] == TINY["num_test"]
    for name in ("dice", "auc", "accuracy", "sensitivity", "specificity"):
        value, (low, high) = metrics[name], metrics[f"{name}_ci95"]
        assert 0.0 <= low <= value <= high <= 1.0, name
    rows = (trained / "metrics_per_case.csv").read_text().splitlines()
    assert rows[0].startswith("case,dice,auc") and len(rows) == 1 + TINY["num_test"] and rows[1].startswith("01_test,")


def test_inference_outputs_at_input_size(tiny_pipeline, tiny_dir):
    out = tiny_pipeline(AREA)["pred"]  # the shared run inferred on the test images
    files = sorted(p.name for p in (out / "predictions").iterdir())
    assert len(files) == 2 * TINY["num_test"] and files[:2] == ["01_test_prob.png", "01_test_seg.png"]
    seg = np.asarray(Image.open(out / "predictions" / "01_test_seg.png"))
    prob = np.asarray(Image.open(out / "predictions" / "01_test_prob.png"))
    fov = np.asarray(Image.open(tiny_dir / "test/mask/01_test_mask.gif").convert("L"))
    assert seg.shape == prob.shape == (HEIGHT, WIDTH) and seg.dtype == np.uint8
    assert set(np.unique(seg)) <= {0, 255}
    assert not seg[fov == 0].any() and not prob[fov == 0].any(), "outside the FOV must be 0"
    np.testing.assert_array_equal(seg > 0, prob >= 128)


def test_evaluate_missing_checkpoint_is_clear(tmp_path):
    from common.checkpoint import CheckpointError, require_checkpoint

    with pytest.raises(CheckpointError, match="does not exist: train first .*--ckpt_path"):
        require_checkpoint(str(tmp_path / "models" / "model.pt"))


# ----------------------------------------------------------------------------------------------------------- configs
def test_metadata_valid_and_tiny_ids_harmless():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    if not SCHEMA.is_file():
        pytest.skip(f"official bundle schema not found at {SCHEMA}: metadata NOT validated")
    jsonschema.validate(meta, json.loads(SCHEMA.read_text()))
    tiny = json.loads((CONFIGS / "tiny.json").read_text())
    assert all("#" not in k for k in tiny), "tiny.json holds top-level ids only"
    assert tiny["harness_input_shape"][1] == meta["network_data_format"]["inputs"]["image"]["num_channels"]


def test_import_module_helper_consistency():
    data = import_bundle_module(AREA, "data")
    assert Path(data.__file__).parent == REPO / "bundles" / AREA / "scripts"
