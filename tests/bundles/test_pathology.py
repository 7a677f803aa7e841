"""Tests of the pathology bundle: stain normalisation, PCam HDF5 layout, WSI heat-maps, bad inputs, workflows.

Whole workflows run in subprocesses (``run_bundle``); one tiny synthetic data set and one trained tiny checkpoint are
shared by the module-scoped fixtures.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch

from bundle_harness import REPO, config_list, import_bundle_module, run_monai_bundle

AREA = "pathology"
TINY = json.loads((REPO / "bundles" / AREA / "configs" / "tiny.json").read_text())


def mod(name: str):
    return import_bundle_module(AREA, name)


@pytest.fixture(scope="module")
def dataset(tiny_pipeline) -> Path:
    """The tiny synthetic PCam set (and slide) of the shared run (read-only)."""
    return tiny_pipeline(AREA)["data"]


@pytest.fixture(scope="module")
def trained(tiny_pipeline) -> Path:
    """Output folder of the shared tiny run: 1 epoch of training, then evaluate (read-only)."""
    return tiny_pipeline(AREA)["out"]


# ------------------------------------------------------------------------------------------------ stain normalisation
def _two_stain_image(h_vec, e_vec, light=240.0) -> np.ndarray:
    """A 64 x 64 image whose every pixel is an exact Beer-Lambert mixture of two stains (a concentration grid)."""
    ch, ce = np.meshgrid(np.linspace(0.0, 1.5, 64), np.linspace(0.0, 1.0, 64), indexing="ij")
    h, e = np.asarray(h_vec) / np.linalg.norm(h_vec), np.asarray(e_vec) / np.linalg.norm(e_vec)
    od = ch[..., None] * h + ce[..., None] * e
    return np.clip(np.rint(light * np.exp(-od)), 0, 255).astype(np.uint8)


def _cos(a, b) -> float:
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("site_index", [0, 3])
def test_stain_extraction_recovers_known_vectors_haematoxylin_first(site_index):
    transforms, tissue = mod("transforms"), mod("tissue")
    site = tissue.SITES[site_index]
    he = transforms.OrderedExtractHEStains()(_two_stain_image(site.h_vector, site.e_vector))
    assert he.shape == (3, 2)
    assert _cos(he[:, 0], site.h_vector) > 0.99, he
    assert _cos(he[:, 1], site.e_vector) > 0.99, he


def test_macenko_normalisation_maps_sites_to_the_reference_stain():
    transforms, tissue = mod("transforms"), mod("tissue")
    target_h, target_e = (0.5626, 0.7201, 0.4062), (0.2159, 0.8012, 0.5581)  # MONAI's default reference
    for site in (tissue.SITES[1], tissue.SITES[3]):
        out = transforms.MacenkoNormalize()(_two_stain_image(site.h_vector, site.e_vector))
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
        he = transforms.OrderedExtractHEStains()(out)
        assert _cos(he[:, 0], target_h) > 0.98 and _cos(he[:, 1], target_e) > 0.98, he


def test_macenko_identity_when_disabled_and_on_glass():
    transforms = mod("transforms")
    image = _two_stain_image((0.65, 0.70, 0.29), (0.07, 0.99, 0.11))
    assert np.array_equal(transforms.MacenkoNormalize(enabled=False)(image), image)
    glass = np.full((96, 96, 3), 238, np.uint8)
    assert np.array_equal(transforms.MacenkoNormalize()(glass), glass)  # MONAI raises; the bundle keeps the patch
    with pytest.raises(ValueError, match="uint8"):
        transforms.MacenkoNormalize()(image.astype(np.float32))


def test_hed_jitter_is_seeded_and_keeps_uint8():
    transforms = mod("transforms")
    image = _two_stain_image((0.65, 0.70, 0.29), (0.07, 0.99, 0.11))
    a = transforms.RandHEDJitterd("image", prob=1.0, sigma=0.1).set_random_state(3)({"image": image})["image"]
    b = transforms.RandHEDJitterd("image", prob=1.0, sigma=0.1).set_random_state(3)({"image": image})["image"]
    assert a.dtype == np.uint8 and a.shape == image.shape and np.array_equal(a, b) and not np.array_equal(a, image)


# ------------------------------------------------------------------------------------------------ data layout
def test_pcam_hdf5_round_trip(tmp_path):
    phantom, data, transforms = mod("phantom"), mod("data"), mod("transforms")
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("valid", 3)):
        images = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        labels = np.arange(n) % 2
        phantom.write_pcam(*phantom.split_paths(tmp_path, split), images, labels)
    assert data.validate(tmp_path, ["train", "valid"]) == {"train": 5, "valid": 3}
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_valid_y.h5") as f:
        assert f["y"].shape == (3, 1, 1, 1) and f["y"].dtype == np.uint8
    items = data.datalist(tmp_path, "valid")
    assert [i["case"] for i in items] == ["valid_000000", "valid_000001", "valid_000002"]
    assert [float(i["label"][0]) for i in items] == [0.0, 1.0, 0.0]
    loaded = transforms.LoadPCamPatchd("image")(items[2])["image"]
    assert loaded.dtype == np.uint8 and np.array_equal(loaded, images[2])


def test_phantom_is_deterministic_and_labels_the_centre():
    phantom, tissue = mod("phantom"), mod("tissue")
    a = phantom.make_split(np.random.default_rng(7), 6, tissue.TRAIN_SITES)
    b = phantom.make_split(np.random.default_rng(7), 6, tissue.TRAIN_SITES)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[1].tolist() == [0, 1, 0, 1, 0, 1]  # odd patches are drawn with tumour over the centre
    assert not np.array_equal(a[0], phantom.make_split(np.random.default_rng(8), 6, tissue.TRAIN_SITES)[0])


def test_synthesized_layout_and_slide_pyramid(dataset):
    from monai.data import WSIReader

    data = mod("data")
    n = TINY["num_cases"]
    assert data.validate(dataset, ["train", "valid", "test"]) == {"train": n, "valid": n // 2, "test": n // 2}
    slide = dataset / "synthetic_slide_000.tif"
    reader = WSIReader(backend="tifffile")
    wsi = reader.read(str(slide))
    assert reader.get_level_count(wsi) == 3
    assert [tuple(reader.get_size(wsi, lvl)) for lvl in range(3)] == [(1024, 1024), (512, 512), (256, 256)]
    level1, _ = reader.get_data(wsi, level=1)
    assert tuple(level1.shape) == (3, 512, 512)
    wsi.close()


# ------------------------------------------------------------------------------------------------ metrics
def test_patch_metrics_hand_computed():
    """The evaluate.json metric entries (common.classification on pathology's row columns) on a hand-made table."""
    from common.classification import row_auc, row_confusion_metric

    rows = [{"label": 0, "prob_tumour": 0.1, "pred": 0}, {"label": 0, "prob_tumour": 0.6, "pred": 1},
            {"label": 1, "prob_tumour": 0.4, "pred": 0}, {"label": 1, "prob_tumour": 0.9, "pred": 1}]
    # positive/negative pairs ranked correctly: (0.4>0.1), (0.9>0.1), (0.9>0.6) = 3 of 4
    assert row_auc(rows, "prob_tumour") == pytest.approx(0.75)
    assert row_confusion_metric(rows, "accuracy", "pred") == pytest.approx(0.5)  # predictions 0,1,0,1
    assert row_confusion_metric(rows, "sensitivity", "pred") == pytest.approx(0.5)
    assert row_confusion_metric(rows, "specificity", "pred") == pytest.approx(0.5)
    assert row_auc(rows[:2], "prob_tumour") is None and row_confusion_metric(rows[:2], "sensitivity", "pred") is None
    # labelled at a recorded threshold of 0.3 (predictions 0, 1, 1, 1), and again at 0.5 for metrics.json *_at_0_5
    from common.classification import row_confusion_metric_at

    recorded = [{**r, "pred": int(r["prob_tumour"] >= 0.3)} for r in rows]
    assert row_confusion_metric(recorded, "sensitivity", "pred") == 1.0
    assert row_confusion_metric(recorded, "specificity", "pred") == pytest.approx(0.5)
    at = row_confusion_metric_at
    assert at(recorded, "sensitivity", "prob_tumour") == pytest.approx(0.5)
    assert at(recorded, "specificity", "prob_tumour") == 0.5 and at(recorded, "accuracy", "prob_tumour") == 0.5
    assert at(recorded, "accuracy", "prob_tumour", 0.95) == 0.5
    assert at(recorded, "specificity", "prob_tumour", 0.05) == 0.0
    assert at(rows[:2], "sensitivity", "prob_tumour") is None


# ------------------------------------------------------------------------------------------------ heat-map geometry
def test_tissue_threshold_and_cells():
    transforms, inference = mod("transforms"), mod("inference")
    assert transforms.tissue_saturation_threshold(np.full((8, 8), 0.02)) == pytest.approx(0.07)
    image = np.full((256, 256, 3), 240, np.uint8)
    image[64:192, 64:192] = (200, 120, 190)  # pink tissue square
    cells = inference.tissue_cells(image, stride=64)
    expected = np.zeros((4, 4), bool)
    expected[1:3, 1:3] = True
    assert np.array_equal(cells, expected)


def test_heatmap_cells_are_centred_patches():
    inference = mod("inference")
    rng = np.random.default_rng(0)
    image = np.empty((224, 300, 3), np.uint8)  # magenta "tissue" of random brightness, 5 % glass pixels
    image[..., 0], image[..., 2] = rng.integers(120, 250, (2, 224, 300))
    image[..., 1] = image[..., 0] // 3
    image[rng.random((224, 300)) < 0.05] = 240
    tissue = inference.tissue_cells(image, 64)
    assert tissue.shape == (4, 5) and tissue.all()  # ceil(224 / 64), ceil(300 / 64)
    patches = [inference.centred_patch(image, i, j, 64) for i in range(4) for j in range(5)]
    assert all(p.shape == (96, 96, 3) and p.dtype == np.uint8 for p in patches)
    # the patch of cell (i, j) is centred on pixel (64 i + 32, 64 j + 32); beyond the image it is white padding
    expected = [image[i * 64 + 32, j * 64 + 32].tolist() if i * 64 + 32 < 224 else [255, 255, 255]
                for i in range(4) for j in range(5)]
    assert [p[48, 48].tolist() for p in patches] == expected
    # cell (0, 0): rows/columns -16..79 of the image, the first 16 white; cell (3, 4): rows 176..271, columns 240..335
    assert np.array_equal(patches[0][16:, 16:], image[:80, :80]) and (patches[0][:16] == 255).all()
    assert np.array_equal(patches[-1][:48, :60], image[176:, 240:]) and (patches[-1][48:] == 255).all()


def test_all_background_slide_gives_an_empty_heatmap(tmp_path, trained):
    phantom = mod("phantom")
    rng = np.random.default_rng(1)
    glass = np.clip(rng.normal(236, 2, (512, 512, 3)), 0, 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    phantom.write_pyramid(tmp_path / "in" / "glass.tif", glass)
    rows = _predict(tmp_path / "in", tmp_path / "out", trained / "models" / "model.pt")
    assert rows == [{"case": "glass", "kind": "slide", "prob_tumour": 0.0, "label": 0, "tumour_area_fraction": 0.0,
                     "tissue_cells": 0, "heatmap_level": 0, "heatmap_cell_px": 96}]
    heat = tifffile.imread(tmp_path / "out" / "predictions" / "glass_prob.tif")
    assert heat.shape == (6, 6) and not heat.any()


def _predict(input_dir: Path, output_dir: Path, ckpt: Path, stride: int = 96, **overrides) -> list[dict]:
    """Run inference.json (+ tiny.json) in this interpreter, as ``monai.bundle run`` does; return the CaseWriter's
    rows (what predictions.csv holds)."""
    from bundle_harness import inference_parser

    parser = inference_parser(AREA, input_dir, output_dir, ckpt, **{"heatmap_stride": stride, "batch_size": 32,
                                                                     **overrides})
    parser.get_parsed_content("evaluator").run()
    return parser.get_parsed_content("handlers")[0].rows


@pytest.mark.parametrize("layout", ["pages", "subifds"])
def test_jpeg_tiled_pyramid_gives_a_heatmap(tmp_path, layout, caplog):
    """Issue 13 kind 6: JPEG-compressed tiles (what vendor converters write; needs the imagecodecs package) are read,
    as top-level pyramid pages or as SubIFDs (OME-TIFF / bfconvert style), and give a heat-map; a stray file in the
    input folder is named in a warning, a hidden one is not."""
    import logging

    inference, networks, phantom = mod("inference"), mod("networks"), mod("phantom")

    image, _ = phantom.render_slide(0, 0, 512)
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = inputs / "vendor.TIF"
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, photometric="rgb", tile=(128, 128), compression="jpeg",
                  subifds=2 if layout == "subifds" else 0)
        level = image
        for _ in range(2):
            level = level.reshape(level.shape[0] // 2, 2, level.shape[1] // 2, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
            tif.write(level, photometric="rgb", tile=(128, 128), compression="jpeg", subfiletype=1)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG and len(tif.series[0].levels) == 3
    read = inference.read_slide(path, 0)
    assert read.shape == (512, 512, 3) and np.abs(read.astype(int) - image).mean() < 4  # JPEG is lossy
    if layout == "pages":
        assert inference.read_slide(path, 1).shape == (256, 256, 3)
    (inputs / "vendor.svs").write_bytes(b"II*\0")
    (inputs / "._vendor.TIF").write_bytes(b"\0\5\26\7")  # macOS resource fork: hidden, ignored
    net = networks.PatchClassifier(channels=TINY["channels"])
    torch.save(net.state_dict(), tmp_path / "model.pt")
    with caplog.at_level(logging.WARNING):
        rows = _predict(inputs, tmp_path / "out", tmp_path / "model.pt", stain_normalisation=False)
    assert [r["case"] for r in rows] == ["vendor"] and rows[0]["tissue_cells"] > 0
    heat = tifffile.imread(tmp_path / "out" / "predictions" / "vendor_prob.tif")
    assert heat.shape == (6, 6) and heat.min() >= 0 and heat.max() <= 1 and (heat > 0).sum() > 0
    warnings = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{inputs / 'vendor.svs'}: not predicted") and "convert" in m for m in warnings)
    assert not any("._vendor" in m for m in warnings)


# ------------------------------------------------------------------------------------------------ bad inputs
def _write_h5(path: Path, name: str, data) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=data)


def _good_split(folder: Path, split: str = "train", n: int = 4) -> tuple[Path, Path]:
    phantom = mod("phantom")
    paths = phantom.split_paths(folder, split)
    phantom.write_pcam(*paths, np.zeros((n, 96, 96, 3), np.uint8) + 200, np.arange(n) % 2)
    return paths


def _bad_dataset(case: str, folder: Path) -> Path:
    (px, py), (vx, vy) = _good_split(folder, "train"), _good_split(folder, "valid")
    n = 4
    if case == "x named images":
        _write_h5(px, "images", np.zeros((n, 96, 96, 3), np.uint8))
        return px
    if case == "y named labels":
        _write_h5(vy, "labels", np.zeros((n, 1, 1, 1), np.uint8))
        return vy
    if case == "x wrong patch size":
        _write_h5(px, "x", np.zeros((n, 64, 64, 3), np.uint8))
        return px
    if case == "x not uint8":
        _write_h5(px, "x", np.zeros((n, 96, 96, 3), np.float32))
        return px
    if case == "x/y count mismatch":
        _write_h5(vy, "y", np.zeros((n + 3, 1, 1, 1), np.uint8))
        return vx
    if case == "label value 2":
        _write_h5(py, "y", np.full((n, 1, 1, 1), 2, np.uint8))
        return py
    if case == "corrupt hdf5":
        px.write_bytes(b"\x89HDF\r\n garbage, not an HDF5 file" * 10)
        return px
    if case == "empty file":
        py.write_bytes(b"")
        return py
    if case == "missing y file":
        vy.unlink()
        return vy
    raise AssertionError(case)


DATASET_CASES = ["x named images", "y named labels", "x wrong patch size", "x not uint8", "x/y count mismatch",
                 "label value 2", "corrupt hdf5", "empty file", "missing y file"]


@pytest.mark.parametrize("case", DATASET_CASES)
def test_bad_dataset_is_reported_naming_the_file(case, tmp_path):
    data = mod("data")
    from common.validation import DatasetError

    bad = _bad_dataset(case, tmp_path / "data")
    with pytest.raises(DatasetError) as err:
        data.training_split(tmp_path / "data", synthetic={"synthetic_dir": tmp_path / "default"})
    assert str(bad) in str(err.value), str(err.value)
    assert not (tmp_path / "default").exists()  # nothing generated, nothing written


def test_bad_dataset_stops_training_before_any_output(tmp_path):
    _bad_dataset("x/y count mismatch", tmp_path / "data")  # valid x/y counts differ
    _write_h5(tmp_path / "data" / "camelyonpatch_level_2_split_train_x.h5", "x", np.zeros((4, 96, 96, 3), np.float32))
    proc = run_monai_bundle(["run", "--config_file", config_list(AREA, "train", "tiny"), "--dataset_dir",
                             tmp_path / "data", "--output_dir", tmp_path / "out"], expect_ok=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "camelyonpatch_level_2_split_valid_x.h5" in text and "camelyonpatch_level_2_split_train_x.h5" in text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.pt"))


SLIDE_CASES = ["strip tiff (not tiled)", "corrupt tiff", "png renamed tif", "x file with wrong dataset"]


@pytest.mark.parametrize("case", SLIDE_CASES)
def test_bad_inference_input_is_named_and_others_still_predicted(case, tmp_path, trained):
    from common.validation import BatchFailure

    inp = tmp_path / "in"
    inp.mkdir()
    _good_split(inp, "test", n=3)
    if case == "strip tiff (not tiled)":
        bad = inp / "strips.tif"
        tifffile.imwrite(bad, np.full((256, 256, 3), 200, np.uint8), photometric="rgb")
    elif case == "corrupt tiff":
        bad = inp / "broken.tif"
        bad.write_bytes(b"II*\x00" + b"\x00\xff" * 50)
    elif case == "png renamed tif":
        from PIL import Image

        bad = inp / "photo.tif"
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bad, format="PNG")
    else:
        bad = inp / "odd_x.h5"
        _write_h5(bad, "images", np.zeros((2, 96, 96, 3), np.uint8))
    with pytest.raises(BatchFailure) as err:
        _predict(inp, tmp_path / "out", trained / "models" / "model.pt")
    assert str(bad) in str(err.value) and "1 input(s) failed" in str(err.value)
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == [f"camelyonpatch_level_2_split_test_x_{i:06d}" for i in range(3)]
    written = [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written == ["predictions.csv"], written  # nothing for the bad input, no temporary files


def test_missing_checkpoint_is_a_clear_error(tmp_path, dataset):
    from common.errors import describe

    with pytest.raises(Exception) as info:  # MONAI wraps it in its instantiation error; the root cause is named
        _predict(dataset, tmp_path / "out", tmp_path / "nowhere")
    assert "CheckpointError" in describe(info.value) and "train first" in describe(info.value)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ workflows
def test_a_few_iterations_lower_the_loss():
    networks, phantom, tissue = mod("networks"), mod("phantom"), mod("tissue")
    torch.manual_seed(0)
    images, labels = phantom.make_split(np.random.default_rng(0), 16, tissue.TRAIN_SITES)
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
    y = torch.as_tensor(labels).float()[:, None]
    net = networks.PatchClassifier(channels=[8, 16], dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_evaluate_writes_metrics_with_intervals(dataset, trained):
    run_monai_bundle(["run", "--config_file", config_list(AREA, "train", "evaluate", "tiny"), "--dataset_dir",
                      dataset, "--output_dir", trained])
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["key_metric"] == "auc" and metrics["num_cases"] == TINY["num_cases"] // 2
    for name in ("auc", "accuracy", "sensitivity", "specificity", "accuracy_at_0_5", "sensitivity_at_0_5",
                 "specificity_at_0_5"):
        low, high = metrics[f"{name}_ci95"]
        assert 0.0 <= low <= metrics[name] <= high <= 1.0
    with open(trained / "metrics_per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["num_cases"] and set(rows[0]) == {"case", "label", "prob_tumour",
                                                                  "prob_tumour_uncalibrated", "pred"}


def _parsed_stain_setting(configs: list[str], ckpt_path: Path, **overrides) -> bool:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / AREA / "configs" / f"{c}.json") for c in configs])
    parser["ckpt_path"] = str(ckpt_path)
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("stain_normalisation")


@pytest.mark.parametrize("recorded", [True, False])
def test_evaluate_and_inference_use_the_stain_setting_the_model_was_trained_with(trained, tmp_path, recorded):
    assert json.loads((trained / "models" / "model.json").read_text())["stain_normalisation"] is True
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes((trained / "models" / "model.pt").read_bytes())
    (tmp_path / "models" / "model.json").write_text(json.dumps({"stain_normalisation": recorded}))
    assert _parsed_stain_setting(["train", "evaluate"], ckpt) is recorded
    assert _parsed_stain_setting(["inference"], ckpt) is recorded
    # an explicit command-line value still wins, and a checkpoint without settings gets the default (on)
    assert _parsed_stain_setting(["inference"], ckpt, stain_normalisation=not recorded) is (not recorded)
    (tmp_path / "models" / "model.json").unlink()
    assert _parsed_stain_setting(["train", "evaluate"], ckpt) is True


def test_inference_heatmap_matches_the_slide(tiny_pipeline, dataset):
    out = tiny_pipeline(AREA)["pred"]  # the shared run inferred on the data set folder (slide + patch files)
    stride = TINY["heatmap_stride"]
    heat = tifffile.imread(out / "predictions" / "synthetic_slide_000_prob.tif")
    cells = math.ceil(1024 / stride)
    assert heat.shape == (cells, cells) and heat.dtype == np.float32 and 0 <= heat.min() and heat.max() <= 1
    from PIL import Image

    overlay = np.asarray(Image.open(out / "predictions" / "synthetic_slide_000_heatmap.png"))
    assert overlay.shape == (cells, cells, 3)
    with open(out / "predictions.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    slide = rows["synthetic_slide_000"]
    assert slide["kind"] == "slide" and int(slide["heatmap_cell_px"]) == stride
    assert int(slide["tissue_cells"]) == int((heat > 0).sum()) > 0
    assert float(slide["prob_tumour"]) == pytest.approx(float(heat.max()), abs=1e-5)
    # every tumour cell of the ground truth lies on detected tissue
    mask = np.asarray(Image.open(dataset / "synthetic_slide_000_tumour_mask.png")) > 0
    tumour_cells = mask.reshape(cells, stride, cells, stride).mean(axis=(1, 3)) > 0.5
    assert tumour_cells.any() and (heat[tumour_cells] > 0).all()
    n = TINY["num_cases"]
    assert sum(r["kind"] == "patch" for r in rows.values()) == n + n // 2 + n // 2


def test_shared_run_calibrates_and_labels_at_the_recorded_threshold(tiny_pipeline):
    """Issue 15: training records temperature and threshold (Youden on the validation split); evaluate reports ECE,
    Brier and the threshold and labels at it; inference's patch and slide labels follow it."""
    from PIL import Image

    from common.calibration import brier_score, expected_calibration_error

    run = tiny_pipeline(AREA)
    settings = json.loads((run["out"] / "models" / "model.json").read_text())
    assert settings["threshold_rule"] == "youden" and settings["temperature"] > 0 and 0 < settings["threshold"] < 1
    threshold = settings["threshold"]
    metrics = json.loads((run["out"] / "metrics.json").read_text())
    assert metrics["threshold"] == threshold and metrics["temperature"] == settings["temperature"]
    with open(run["out"] / "metrics_per_case.csv", newline="") as f:
        per_case = list(csv.DictReader(f))
    labels = [int(r["label"]) for r in per_case]
    probs = [float(r["prob_tumour"]) for r in per_case]
    for row, p in zip(per_case, probs):
        if abs(p - threshold) > 5e-6:  # the CSV keeps 6 significant digits
            assert int(row["pred"]) == int(p >= threshold)
    assert metrics["accuracy"] == pytest.approx(np.mean([int(r["pred"]) == y for r, y in zip(per_case, labels)]))
    assert metrics["ece"] == pytest.approx(expected_calibration_error(probs, labels), abs=1e-5)
    raw = [float(r["prob_tumour_uncalibrated"]) for r in per_case]
    assert metrics["ece_uncalibrated"] == pytest.approx(expected_calibration_error(raw, labels), abs=1e-5)
    assert metrics["brier"] == pytest.approx(brier_score(probs, labels), abs=1e-5)
    assert Image.open(run["out"] / "reliability.png").format == "PNG"
    with open(run["pred"] / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    for row in rows:
        if abs(float(row["prob_tumour"]) - threshold) > 5e-6:
            assert int(row["label"]) == int(float(row["prob_tumour"]) >= threshold), (row, threshold)
    # the same test patches get the same calibrated probability from evaluate and inference
    prefix = "camelyonpatch_level_2_split_test_x_"  # inference names a patch after its file, evaluate after its split
    inferred = {"test_" + r["case"][len(prefix):]: float(r["prob_tumour"])
                for r in rows if r["case"].startswith(prefix)}
    shared = [r for r in per_case if r["case"] in inferred]
    assert shared and all(float(r["prob_tumour"]) == pytest.approx(inferred[r["case"]], abs=2e-5) for r in shared)


def test_patch_gradcam_overlays_named_after_the_input(tmp_path, trained):
    from monai.bundle import ConfigParser
    from PIL import Image

    mod("inference")  # the bundle's scripts importable for the parser
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / AREA / "configs" / "inference.json")])
    parser["ckpt_path"] = str(trained / "models" / "model.pt")
    layer = parser.get_parsed_content("explain_layer")
    assert layer == "features.3.2"  # two stages of two blocks: the last block's ReLU
    assert parser.get_parsed_content("explain") is False  # off by default (a PCam file holds 32768 patches)
    inp = tmp_path / "in"
    inp.mkdir()
    _good_split(inp, "test", n=3)
    rows = _predict(inp, tmp_path / "out", trained / "models" / "model.pt", batch_size=2, explain="true")
    assert [r["case"] for r in rows] == [f"camelyonpatch_level_2_split_test_x_{i:06d}" for i in range(3)]
    written = sorted(p.name for p in (tmp_path / "out" / "predictions").iterdir())
    assert written == [f"camelyonpatch_level_2_split_test_x_{i:06d}_gradcam.png" for i in range(3)]
    assert np.asarray(Image.open(tmp_path / "out" / "predictions" / written[0])).shape == (384, 384, 3)


def test_patch_mask_is_the_truth_behind_the_label_and_draws_like_make_patch():
    phantom, tissue = mod("phantom"), mod("tissue")
    for seed in range(6):
        image, label = phantom.make_patch(np.random.default_rng(seed), True, tissue.TEST_SITE)
        image2, label2, mask = phantom.make_patch_with_mask(np.random.default_rng(seed), True, tissue.TEST_SITE)
        assert np.array_equal(image, image2) and label == label2  # same draws: the data sets stay bit-identical
        assert mask.shape == (96, 96) and mask.dtype == bool
        assert label == int(mask[32:64, 32:64].any())


def test_cam_faithfulness_hand_computed():
    bench = mod("benchmark")
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :, :2] = True  # half the patch: a uniform map puts 0.5 of its mass inside
    masks[1, :2, :2] = True  # a quarter: 0.25
    images = np.zeros((2, 4, 4, 3), np.uint8)
    exact = bench.cam_faithfulness(lambda x: masks[: len(x)].astype(float), images, masks, batch=2)
    assert exact["cam_in_tumour"] == 1.0 and exact["tumour_area_fraction"] == 0.375
    assert exact["cam_minus_uniform"] == 0.625 and exact["cam_beats_uniform"] is True
    assert exact["cam_beats_uniform_share"] == 1.0 and exact["cam_num_patches"] == 2
    uniform = bench.cam_faithfulness(lambda x: np.ones((len(x), 4, 4)), images, masks, batch=1)
    assert uniform["cam_in_tumour"] == pytest.approx(0.375) and uniform["cam_minus_uniform"] == pytest.approx(0.0)
    assert uniform["cam_beats_uniform"] is False and uniform["cam_beats_uniform_share"] == 0.0
    # a map on the wrong side: mass 0 inside, 0.375 below the uniform map
    wrong = bench.cam_faithfulness(lambda x: (~masks[: len(x)]).astype(float), images, masks)
    assert wrong["cam_in_tumour"] == 0.0 and wrong["cam_minus_uniform"] == pytest.approx(-0.375)
    assert wrong["cam_beats_uniform"] is False
    empty = bench.cam_faithfulness(lambda x: np.zeros((len(x), 4, 4)), images, masks)
    assert empty["cam_num_patches"] == 0 and empty["cam_empty_maps"] == 2 and empty["cam_in_tumour"] is None


def test_gradcam_faithfulness_runs_on_the_trained_network(trained):
    bench = mod("benchmark")
    images, masks = bench.tumour_patches_with_masks(3, seed=0)
    assert images.shape == (3, 96, 96, 3) and images.dtype == np.uint8 and masks.shape == (3, 96, 96)
    assert all(0.05 <= m.mean() <= 0.9 for m in masks)
    result = bench.cam_faithfulness(bench.gradcam_of(trained / "models" / "model.pt"), images, masks)
    assert result["cam_num_patches"] + result["cam_empty_maps"] == 3
    assert result["tumour_area_fraction"] is None or 0.05 <= result["tumour_area_fraction"] <= 0.9
    assert result["cam_in_tumour"] is None or 0.0 <= result["cam_in_tumour"] <= 1.0


def test_inference_network_is_channels_last_with_the_contiguous_outputs(tmp_path):
    """inference.json runs the patch classifier in channels-last memory format (0.80 x the time for a batch of 64
    PCam patches, model card); its logits equal the contiguous network's within 1e-4."""
    import torch

    from bundle_harness import inference_network_and_contiguous_copy

    x = torch.rand(16, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    network, contiguous, ours, reference = inference_network_and_contiguous_copy(AREA, x, tmp_path,
                                                                                 through_inferer=False)
    convs = [m.weight for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert all(m.weight.is_contiguous() for m in contiguous.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.allclose(ours, reference, rtol=0.0, atol=1e-4), float((ours - reference).abs().max())
