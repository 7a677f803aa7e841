"""Tests of the breast bundle: mammographic mass classification (benign vs malignant) in the CBIS-DDSM layout.

Covers issue 6's "Done when" and "Bad input" lists: the network's layer structure against Hadush et al. 2020, DICOM
reading (MONOCHROME1/2, rescale), CSV parsing (BENIGN_WITHOUT_CALLBACK, stripped cells, TCIA path resolution), metric
computation on a known confusion matrix, a table of bad inputs, and the train / evaluate / inference / torchrun
workflows on one shared tiny synthetic dataset.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle_harness import (
    REPO,
    config_list,
    import_bundle_module,
    inference_evaluator,
    inference_parser,
    run_monai_bundle,
    seeded_checkpoint,
)

AREA = "breast"
TRAIN_CSV, TEST_CSV = "mass_case_description_train_set.csv", "mass_case_description_test_set.csv"


def mod(name: str):
    return import_bundle_module(AREA, name)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --------------------------------------------------------------------------------------------- shared fixtures
@pytest.fixture(scope="module")
def tiny_data(tiny_pipeline) -> Path:
    """One tiny synthetic CBIS-DDSM set (16 training masses, 8 test masses) of the shared run (read-only)."""
    return tiny_pipeline(AREA)["data"]


@pytest.fixture(scope="module")
def trained(tiny_pipeline) -> dict:
    """The shared run: train (1 epoch, tiny), evaluate and infer once through the real bundle commands."""
    run = tiny_pipeline(AREA)
    return {"out": run["out"], "pred": run["pred"],
            "logs": tuple(run["logs"][step] for step in ("train", "evaluate", "inference"))}


# --------------------------------------------------------------------------------------------- network
def test_network_layers_follow_the_case_study():
    networks = mod("networks")
    net = networks.HadushCNN(channels=(8, 16, 32, 64, 64), dropout=0.3)
    blocks = list(net.features)
    assert len(blocks) == 5
    widths = [1, 8, 16, 32, 64, 64]
    for i, block in enumerate(blocks):
        layers = list(block.children())
        assert [type(m).__name__ for m in layers] == ["Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d", "Dropout"]
        conv, pool = layers[0], layers[3]
        assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
        assert (conv.in_channels, conv.out_channels) == (widths[i], widths[i + 1])
        assert pool.kernel_size == 2 and pool.stride == 2 and layers[4].p == 0.3
    net.eval()
    for side in (32, 64):
        assert net(torch.rand(2, 1, side, side)).shape == (2, 2)
    scripted = torch.jit.script(net)
    x = torch.rand(1, 1, 64, 64)
    assert torch.allclose(scripted(x), net(x), atol=1e-6)
    with pytest.raises(ValueError, match="five positive widths"):
        networks.HadushCNN(channels=(8, 16, 32, 64))


# --------------------------------------------------------------------------------------------- DICOM
def test_dicom_monochrome_and_rescale(tmp_path):
    import pydicom

    dicom = mod("dicom")
    values2 = np.array([[0.0, 100.0], [1000.0, 4095.0]])
    dicom.write_dicom(tmp_path / "m2.dcm", values2, bits_stored=12, photometric="MONOCHROME2")
    np.testing.assert_array_equal(dicom.read_dicom(tmp_path / "m2.dcm"), values2)
    # 16-bit MONOCHROME1 with slope 0.5 and intercept -1024: display value -1024 is stored as 0 before inversion,
    # i.e. 65535 in the file; 100.5 is stored as (100.5 + 1024) / 0.5 = 2249 -> 65535 - 2249 = 63286.
    values1 = np.array([[-1024.0, -974.0], [0.0, 100.5]])
    dicom.write_dicom(tmp_path / "m1.dcm", values1, bits_stored=16, photometric="MONOCHROME1", slope=0.5,
                      intercept=-1024.0)
    ds = pydicom.dcmread(tmp_path / "m1.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 16
    assert ds.pixel_array[0, 0] == 65535 and ds.pixel_array[1, 1] == 63286
    image = dicom.read_dicom(tmp_path / "m1.dcm")
    np.testing.assert_array_equal(image, values1)  # larger = denser, in the rescaled units
    assert image.dtype == np.float32


def test_same_mass_as_monochrome1_and_2_gives_the_same_network_input(tmp_path):
    dicom, transforms = mod("dicom"), mod("transforms")
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4000, size=(40, 40)).astype(float)
    dicom.write_dicom(tmp_path / "a.dcm", values, bits_stored=12, photometric="MONOCHROME2")
    dicom.write_dicom(tmp_path / "b.dcm", values * 2 - 1024, bits_stored=14, photometric="MONOCHROME1", slope=2.0,
                      intercept=-1024)
    from monai.transforms import ScaleIntensityRangePercentiles

    window = ScaleIntensityRangePercentiles(1, 99, 0.0, 1.0, clip=True)
    load = transforms.LoadMass()
    a, b = window(load(str(tmp_path / "a.dcm"))), window(load(str(tmp_path / "b.dcm")))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_load_mass_crops_around_the_roi_mask(tmp_path):
    dicom, transforms = mod("dicom"), mod("transforms")
    full = np.arange(60 * 50, dtype=float).reshape(60, 50)
    mask = np.zeros((60, 50))
    mask[10:20, 20:30] = 255  # 10 x 10 box centred at (15, 25); margin 0.5 -> side 20 -> rows 5:25, cols 15:35
    dicom.write_dicom(tmp_path / "full.dcm", full, bits_stored=12)
    dicom.write_dicom(tmp_path / "roi.dcm", mask, bits_stored=8)
    crop = transforms.LoadMass(margin=0.5)((str(tmp_path / "full.dcm"), str(tmp_path / "roi.dcm")))
    assert crop.shape == (1, 20, 20)
    np.testing.assert_array_equal(crop[0], full[5:25, 15:35])


def test_denoise_keeps_flat_images_and_removes_salt_noise():
    transforms = mod("transforms")
    flat = np.full((1, 16, 16), 0.4, dtype=np.float32)
    np.testing.assert_allclose(transforms.Denoise()(flat), flat, atol=1e-5)
    salty = flat.copy()
    salty[0, 8, 8] = 1.0
    out = transforms.Denoise(gaussian_sigma=0, median_size=3, bilateral_sigma_color=0)(salty)
    assert out[0, 8, 8] == pytest.approx(0.4)
    assert np.array_equal(transforms.Denoise(0, 0, 0, 0)(salty), salty)
    with pytest.raises(ValueError, match="gaussian_sigma=-1"):
        transforms.Denoise(gaussian_sigma=-1)


# --------------------------------------------------------------------------------------------- CSV and paths
def write_table(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_table(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_parsing_labels_and_stripped_cells(tiny_data, tmp_path):
    data = mod("data")
    root = tmp_path / "D"
    shutil.copytree(tiny_data, root)
    rows = read_table(root / TRAIN_CSV)[:3]
    for row, pathology in zip(rows, ["MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"]):
        row["pathology"] = f" {pathology}\n"
        row["cropped image file path"] = row["cropped image file path"] + "\n"
    rows = [{("breast density" if k == "breast_density" else k): v for k, v in r.items()} for r in rows]
    write_table(root / TRAIN_CSV, rows)
    items = data.load_split(root, "train")
    assert [i["label"] for i in items] == [1, 0, 0]
    assert all(Path(i["image"]).is_file() for i in items)
    assert items[0]["case"] == f"Mass-Training_{rows[0]['patient_id']}_{rows[0]['left or right breast']}_" \
                               f"{rows[0]['image view']}_1"


def test_paths_resolve_through_the_case_folder_in_a_tcia_tree(tiny_data, tmp_path):
    """TCIA's download renames everything below the case folder; the reader finds files by case folder + kind."""
    data = mod("data")
    root = tmp_path / "D"
    rows = read_table(tiny_data / TRAIN_CSV)[:2]
    for row in rows:
        full_case = row["image file path"].split("/")[0]
        roi_case = row["cropped image file path"].split("/")[0]
        for column, case, series in (("image file path", full_case, "1.000000-full mammogram images-11"),
                                     ("cropped image file path", roi_case, "1.000000-cropped images-22"),
                                     ("ROI mask file path", roi_case, "1.000000-ROI mask images-33")):
            target = root / "CBIS-DDSM" / case / "07-20-2016-DDSM-99" / series / "1-1.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tiny_data / row[column].strip(), target)
    rows.append(dict(rows[0], patient_id="P_09999",
                     **{"cropped image file path": "Mass-Training_P_09999_LEFT_CC_1/x/y/000000.dcm"}))
    write_table(root / TRAIN_CSV, rows)
    problems = data.Problems("test")
    items = data.load_split(root, "train", "cropped", problems)
    assert "cropped images-22" in items[0]["image"] and "cropped images-22" in items[1]["image"]
    assert len(problems) == 1 and "line 4" in problems.items[0][0] and "P_09999" in problems.items[0][1]
    items = data.load_split(root, "train", "roi_mask", data.Problems("test"))
    assert "full mammogram" in items[0]["full"] and "ROI mask" in items[0]["roi"]


def _one_series_tree(tiny_data: Path, root: Path, n_rows: int = 3, descriptions: str = "as_written") -> list[dict]:
    """TCIA's other CBIS-DDSM layout: the ROI folder holds ONE series ('ROI mask images') with both the cropped image
    and the mask as 1-1.dcm / 1-2.dcm (here the mask first, so file order cannot decide). ``descriptions``: keep the
    written SeriesDescriptions ('cropped images' / 'ROI mask images'), make both 'ROI mask images' (as in the real
    one-series download), or delete the tag."""
    import pydicom

    rows = read_table(tiny_data / TRAIN_CSV)[:n_rows]
    for row in rows:
        full_case = row["image file path"].split("/")[0]
        roi_case = row["cropped image file path"].split("/")[0]
        full = root / "CBIS-DDSM" / full_case / "07-20-2016-DDSM-1" / "1.000000-full mammogram images-1" / "1-1.dcm"
        series = root / "CBIS-DDSM" / roi_case / "07-21-2016-DDSM-2" / "1.000000-ROI mask images-2"
        for source, target in ((row["image file path"], full), (row["ROI mask file path"], series / "1-1.dcm"),
                               (row["cropped image file path"], series / "1-2.dcm")):
            target.parent.mkdir(parents=True, exist_ok=True)
            ds = pydicom.dcmread(tiny_data / source.strip())
            if descriptions == "one_series" and target.parent == series:
                ds.SeriesDescription = "ROI mask images"
            elif descriptions == "none":
                del ds.SeriesDescription
            ds.save_as(target, enforce_file_format=True)
        # the CSV keeps CBIS-DDSM's own (non-existing here) paths
    write_table(root / TRAIN_CSV, rows)
    return rows


@pytest.mark.parametrize("descriptions", ["as_written", "one_series", "none"])
def test_crop_and_mask_in_one_series_are_told_apart(tiny_data, tmp_path, descriptions):
    """Issue 13 kind 8: crop and mask in one series folder are resolved by SeriesDescription when it tells them apart,
    else by content (binary mask vs grey-level crop); both crop sources read the right files."""
    data, dicom = mod("data"), mod("dicom")
    root = tmp_path / "D"
    rows = _one_series_tree(tiny_data, root, descriptions=descriptions)
    problems = data.Problems("test")
    items = crops = data.load_split(root, "train", "cropped", problems)
    assert not problems, problems.items
    assert [Path(i["image"]).name for i in items] == ["1-2.dcm"] * 3
    for item, row in zip(items, rows):
        expected = dicom.read_dicom(tiny_data / row["cropped image file path"].strip())
        np.testing.assert_array_equal(dicom.read_dicom(item["image"]), expected)
    items = data.load_split(root, "train", "roi_mask", problems)
    assert not problems, problems.items
    assert [(Path(i["full"]).parent.name, Path(i["roi"]).name) for i in items] == [
        ("1.000000-full mammogram images-1", "1-1.dcm")] * 3
    mask = dicom.read_dicom(items[0]["roi"])
    assert set(np.unique(mask).tolist()) == {0.0, 255.0} and mask.shape == dicom.read_dicom(items[0]["full"]).shape
    how = data.dicom_kind(Path(crops[0]["image"]))
    assert how[0] == ("cropped" if descriptions == "as_written" else "grey")


def _unresolvable(root: Path, rows: list[dict]) -> tuple[str, str]:
    """Make the second row's ROI folder hold two grey-level images (the mask replaced by a second crop)."""
    import pydicom

    series = next((root / "CBIS-DDSM").glob(f"{rows[1]['cropped image file path'].split('/')[0]}/*/*"))
    ds = pydicom.dcmread(series / "1-2.dcm")
    ds.SeriesDescription = "ROI mask images"
    ds.save_as(series / "1-1.dcm")
    ds.save_as(series / "1-2.dcm")
    case = f"Mass-Training_{rows[1]['patient_id']}_{rows[1]['left or right breast']}_{rows[1]['image view']}_1"
    return f"{TRAIN_CSV} line 3", case


def test_unresolvable_row_is_skipped_named_or_refused_with_strict_rows(tiny_data, tmp_path, caplog):
    """An unresolvable row is named in a warning and skipped (and listed in splits.json); strict_rows makes it an
    error naming the row; a split whose every row is bad is an error whatever strict_rows says."""
    import logging

    from common.validation import DatasetError

    data = mod("data")
    root = tmp_path / "D"
    rows = _one_series_tree(tiny_data, root, n_rows=3, descriptions="one_series")
    where, case = _unresolvable(root, rows)
    with caplog.at_level(logging.WARNING):
        items = data.load_split(root, "train", "cropped", data.Problems("t"), strict_rows=False)
    assert [i["case"] for i in items] == [data.case_id(rows[i], "train") for i in (0, 2)]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith(f"{where} ({case}): row skipped") and "2 of its .dcm files could each be the cropped image"
               in m and "1-1.dcm (grey-level image" in m for m in warned), warned
    assert data.skip_summary(root, "train", "cropped") == {"num_skipped_rows": 1}
    with pytest.raises(DatasetError) as info:
        data.validate(root, ("train",), "cropped", strict_rows=True)
    assert f"{where} ({case})" in str(info.value) or f"{where}: case {case}" in str(info.value)
    data.training_split(root, tmp_path / "out", val_fraction=0.5, strict_rows="false")
    splits = json.loads((tmp_path / "out" / "splits.json").read_text())
    assert [r["row"] for r in splits["skipped_rows"]] == [where] and len(splits["train"] + splits["validation"]) == 2
    for row in rows:  # every row bad: the split is empty, which is never silent
        shutil.rmtree(root / "CBIS-DDSM" / row["cropped image file path"].split("/")[0])
    with pytest.raises(DatasetError, match="all 3 row\\(s\\) were skipped"):
        data.validate(root, ("train",), "cropped", strict_rows=False)


def test_folder_with_only_the_mask_does_not_resolve_the_crop(tiny_data, tmp_path):
    """A ROI folder holding only the binary mask must not be taken as the cropped image (silent wrong input)."""
    data = mod("data")
    root = tmp_path / "D"
    rows = _one_series_tree(tiny_data, root, n_rows=2, descriptions="one_series")
    roi_case = rows[0]["cropped image file path"].split("/")[0]
    next((root / "CBIS-DDSM" / roi_case).glob("*/*/1-2.dcm")).unlink()
    problems = data.Problems("t")
    items = data.load_split(root, "train", "cropped", problems)
    assert len(problems) == 1 and "none of its .dcm files is the cropped image" in problems.items[0][1]
    assert "1-1.dcm (ROI mask: binary pixel values)" in problems.items[0][1], problems.items
    assert problems.items[0][0] == f"{TRAIN_CSV} line 2" and [Path(i["image"]).name for i in items] == ["1-2.dcm"]


def test_evaluate_skips_an_unresolvable_row_and_counts_it(tiny_data, tmp_path):
    """Through the bundle command: metrics.json has num_skipped_rows = 1 and 7 cases; --strict_rows true stops
    before any metric, naming the row in the last line."""
    root = tmp_path / "D"
    shutil.copytree(tiny_data, root)
    rows = read_table(root / TEST_CSV)
    (root / rows[2]["cropped image file path"].strip()).unlink()  # its ROI folder keeps only the mask
    ckpt = seeded_checkpoint(AREA, tmp_path / "model.pt")
    out = tmp_path / "out"
    run_monai_bundle(["run", "--config_file", config_list(AREA, "train", "evaluate", "tiny"), "--dataset_dir", root,
                      "--output_dir", out, "--ckpt_path", ckpt])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_skipped_rows"] == 1 and metrics["num_cases"] == 7
    strict = run_monai_bundle(["run", "--config_file", config_list(AREA, "train", "evaluate", "tiny"),
                               "--dataset_dir", root, "--output_dir", tmp_path / "strict", "--ckpt_path", ckpt,
                               "--strict_rows", "true"], expect_ok=False)
    assert strict.returncode != 0 and f"{TEST_CSV} line 4" in strict.stdout + strict.stderr
    assert not (tmp_path / "strict" / "metrics.json").exists()


def test_split_is_by_patient_and_seeded(tiny_data):
    data = mod("data")
    train, val = data.datalist(tiny_data, "train"), data.datalist(tiny_data, "validation")
    assert train and val and not {i["patient"] for i in train} & {i["patient"] for i in val}
    assert [i["case"] for i in val] == [i["case"] for i in data.datalist(tiny_data, "validation")]
    weights = data.class_weights(train)
    labels = np.array([i["label"] for i in train])
    expected = [labels.size / (2 * (labels == c).sum()) for c in (0, 1)]
    assert weights.tolist() == pytest.approx(expected)


# --------------------------------------------------------------------------------------------- metrics
def rows_from(labels, scores, threshold=0.5):
    return [{"case": str(i), "label": y, "p_malignant": s, "predicted": int(s >= threshold)}
            for i, (y, s) in enumerate(zip(labels, scores))]


def test_metrics_on_a_known_confusion_matrix():
    """The evaluate.json metric entries (common.classification on breast's row columns) on a hand-counted table."""
    from common.classification import row_auc, row_confusion_metric

    def metric(name, rows):
        return row_confusion_metric(rows, name, "predicted")

    metrics = mod("metrics")
    # TP = 3, FN = 2 (malignant); TN = 4, FP = 1 (benign)
    rows = rows_from([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], [0.9, 0.8, 0.7, 0.2, 0.1, 0.6, 0.4, 0.3, 0.2, 0.1])
    assert metric("accuracy", rows) == pytest.approx(7 / 10)
    assert metric("precision", rows) == pytest.approx(3 / 4)
    assert metric("sensitivity", rows) == pytest.approx(3 / 5)
    assert metric("specificity", rows) == pytest.approx(4 / 5)
    # AUC by hand: positives {0.9, 0.4}, negatives {0.5, 0.1, 0.4}: 3 + (1 + 0.5) wins of 6 pairs = 0.75
    assert row_auc(rows_from([1, 1, 0, 0, 0], [0.9, 0.4, 0.5, 0.1, 0.4]), "p_malignant") == pytest.approx(0.75)
    only_benign = rows_from([0, 0], [0.2, 0.7])
    assert row_auc(only_benign, "p_malignant") is None and metric("sensitivity", only_benign) is None
    assert metric("precision", rows_from([1, 0], [0.1, 0.2])) is None
    fpr, tpr = metrics.roc_points(rows_from([1, 0], [0.8, 0.3]))
    assert fpr.tolist() == [0.0, 0.0, 1.0] and tpr.tolist() == [0.0, 1.0, 1.0]


def test_metrics_at_a_second_operating_point_hand_computed():
    from common.classification import row_confusion_metric, row_confusion_metric_at

    # predicted at a recorded threshold of 0.75 (TP 2, FN 3, TN 5, FP 0); at 0.5: TP 3, FN 2, TN 4, FP 1
    probs = [0.9, 0.8, 0.7, 0.2, 0.1, 0.6, 0.4, 0.3, 0.2, 0.1]
    rows = rows_from([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], probs, threshold=0.75)
    assert row_confusion_metric(rows, "sensitivity", "predicted") == pytest.approx(2 / 5)
    assert row_confusion_metric(rows, "specificity", "predicted") == 1.0

    def at(metric, rows=rows, threshold=0.5):
        return row_confusion_metric_at(rows, metric, "p_malignant", threshold)

    assert at("sensitivity") == pytest.approx(3 / 5) and at("specificity") == pytest.approx(4 / 5)
    assert at("accuracy") == pytest.approx(7 / 10)
    assert at("sensitivity", threshold=0.1) == 1.0 and at("specificity", threshold=0.1) == 0.0  # p >= t
    assert at("specificity", rows_from([1], [0.9])) is None
    assert [r["predicted"] for r in rows] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]  # the rows given are not changed


# --------------------------------------------------------------------------------------------- phantom
def test_phantom_layout_dicom_tags_and_determinism(tiny_data, tmp_path):
    import pydicom

    phantom = mod("phantom")
    train, test = read_table(tiny_data / TRAIN_CSV), read_table(tiny_data / TEST_CSV)
    assert len(train) == 16 and len(test) == 8
    assert "breast density" in test[0] and "breast_density" in train[0]  # as in the real CSVs
    assert {r["pathology"] for r in train + test} <= {"MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"}
    assert all(r["ROI mask file path"].endswith("\n") for r in train)
    headers = [pydicom.dcmread(tiny_data / r["image file path"]) for r in train + test]
    assert {h.BitsStored for h in headers} <= {12, 14, 16} and len({h.BitsStored for h in headers}) > 1
    assert {h.PhotometricInterpretation for h in headers} == {"MONOCHROME1", "MONOCHROME2"}
    assert all(h.Modality == "MG" and "RescaleSlope" in h and "RescaleIntercept" in h for h in headers)
    again = phantom.synthesize(tmp_path / "again", num_cases=16, seed=0, image_size=(160, 128))
    assert (Path(again) / TRAIN_CSV).read_bytes() == (tiny_data / TRAIN_CSV).read_bytes()
    first = train[0]["cropped image file path"]
    assert (Path(again) / first).read_bytes() == (tiny_data / first).read_bytes()
    other = phantom.synthesize(tmp_path / "other", num_cases=16, seed=1, image_size=(160, 128))
    assert (Path(other) / TRAIN_CSV).read_bytes() != (tiny_data / TRAIN_CSV).read_bytes()
    with pytest.raises(ValueError, match="num_cases >= 2"):
        phantom.synthesize(tmp_path / "bad", num_cases=1)


def test_synthetic_set_generated_only_in_the_default_folder(tmp_path):
    data = mod("data")
    elsewhere = tmp_path / "user_data"
    data.prepare_synthetic(elsewhere, tmp_path / "default", num_cases=2, image_size=(128, 96))
    assert not elsewhere.exists()
    data.prepare_synthetic(tmp_path / "default", tmp_path / "default", num_cases=2, image_size=(128, 96))
    assert (tmp_path / "default" / TRAIN_CSV).is_file() and (tmp_path / "default" / TEST_CSV).is_file()


# --------------------------------------------------------------------------------------------- bad inputs
def _first(root: Path, column: str = "cropped image file path") -> Path:
    return root / read_table(root / TRAIN_CSV)[0][column].strip()


def _edit_rows(root: Path, edit) -> None:
    rows = read_table(root / TRAIN_CSV)
    write_table(root / TRAIN_CSV, edit(rows))


def _rewrite_dicom(path: Path, edit) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path, enforce_file_format=False)


def _no_pixels(ds):
    del ds.PixelData


def _jpeg_ls(ds):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8not-really-jpeg-ls\xff\xd9"])


def _mpeg2(ds):
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3not-really-mpeg2"])


def _rgb(ds):
    ds.PhotometricInterpretation = "RGB"


def _small_mask(root: Path) -> None:
    dicom = mod("dicom")
    dicom.write_dicom(_first(root, "ROI mask file path"), np.full((20, 20), 255.0), bits_stored=8)


BAD_INPUTS = [
    # (id, mutation of a copy of the tiny dataset, crop_source, strings the error must contain)
    ("csv_missing_column", lambda r: _edit_rows(r, lambda rows: [{k: v for k, v in x.items() if k != "pathology"}
                                                                  for x in rows]),
     "cropped", [TRAIN_CSV, "pathology"]),
    ("csv_missing", lambda r: (r / TRAIN_CSV).unlink(), "cropped", [TRAIN_CSV, "missing"]),
    ("csv_header_only", lambda r: _edit_rows(r, lambda rows: rows[:0] or [dict.fromkeys(rows[0], "")]),
     "cropped", [TRAIN_CSV, "no cases"]),
    ("path_does_not_exist", lambda r: _edit_rows(r, lambda rows: [dict(rows[0], **{
        "cropped image file path": "Mass-Training_P_77777_LEFT_CC_1/1.2/3.4/000000.dcm"})] + rows[1:]),
     "cropped", [f"{TRAIN_CSV} line 2", "Mass-Training_P_77777_LEFT_CC_1"]),
    ("unknown_pathology", lambda r: _edit_rows(r, lambda rows: [dict(rows[0], pathology="MAYBE")] + rows[1:]),
     "cropped", [f"{TRAIN_CSV} line 2", "MAYBE"]),
    ("dicom_without_pixel_data", lambda r: _rewrite_dicom(_first(r), _no_pixels), "cropped",
     ["{crop}", "no pixel data"]),
    ("unsupported_transfer_syntax", lambda r: _rewrite_dicom(_first(r), _mpeg2), "cropped",
     ["{crop}", "MPEG2", "transfer syntax", "pydicom has no decoder"]),
    ("damaged_jpeg_ls_data", lambda r: _rewrite_dicom(_first(r), _jpeg_ls), "cropped",
     ["{crop}", "JPEG-LS", "cannot decode", "damaged"]),
    ("not_a_dicom_file", lambda r: _first(r).write_bytes(b"this is not DICOM"), "cropped",
     ["{crop}", "not a readable DICOM"]),
    ("rgb_photometric", lambda r: _rewrite_dicom(_first(r), _rgb), "cropped", ["{crop}", "'RGB'"]),
    ("roi_mask_size_mismatch", _small_mask, "roi_mask", [f"{TRAIN_CSV} line 2", "differ in size"]),
    ("duplicate_case", lambda r: _edit_rows(r, lambda rows: rows + rows[:1]), "cropped", ["duplicate case"]),
]


@pytest.mark.parametrize("name,mutate,crop_source,expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_dataset_is_rejected_naming_the_file(tiny_data, tmp_path, name, mutate, crop_source, expected):
    from common.validation import DatasetError

    data = mod("data")
    root, out = tmp_path / "D", tmp_path / "out"
    shutil.copytree(tiny_data, root)
    crop = str(_first(root))
    mutate(root)
    with pytest.raises(DatasetError) as info:
        data.training_split(root, out, crop_source=crop_source, strict_rows=True)
    message = str(info.value)
    for text in expected:
        assert text.replace("{crop}", crop) in message, f"{name}: {text!r} not in {message}"
    assert files_under(out) == [], f"{name}: outputs left behind: {files_under(out)}"


def test_monochrome1_files_are_accepted(tiny_data):
    """MONOCHROME1 must be handled (inverted), not rejected: the tiny set holds both kinds and validates."""
    mod("data").validate(tiny_data, ("train", "test"))


def test_missing_dataset_dir_names_the_override(tmp_path):
    from common.validation import DatasetError

    with pytest.raises(DatasetError, match="--dataset_dir"):
        mod("data").validate(tmp_path / "nowhere", ("train",))


def test_inference_reports_a_bad_file_and_writes_the_others(tiny_data, tmp_path):
    from common.validation import BatchFailure

    ckpt = seeded_checkpoint(AREA, tmp_path / "model.pt")
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for i, row in enumerate(read_table(tiny_data / TEST_CSV)[:2]):
        shutil.copy(tiny_data / row["cropped image file path"].strip(), inputs / f"mass{i}.dcm")
    (inputs / "broken.dcm").write_bytes(b"\x00" * 200)
    with pytest.raises(BatchFailure, match="broken"):
        inference_evaluator(AREA, inputs, out, ckpt, explain=True).run()
    rows = read_table(out / "predictions.csv")
    assert [r["case"] for r in rows] == ["mass0", "mass1"]
    assert files_under(out) == ["predictions.csv", "predictions/mass0_gradcam.png", "predictions/mass1_gradcam.png"]


def test_inference_applies_the_temperature_and_labels_at_the_threshold(tiny_data, tmp_path):
    """Calibrated p = softmax(logits / T): the logit p / (1 - p) shrinks by T; labels are p >= threshold."""
    from common.errors import describe

    ckpt = seeded_checkpoint(AREA, tmp_path / "model.pt")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, row in enumerate(read_table(tiny_data / TEST_CSV)[:4]):
        shutil.copy(tiny_data / row["cropped image file path"].strip(), inputs / f"mass{i}.dcm")
    inference_evaluator(AREA, inputs, tmp_path / "t1", ckpt, explain=False).run()
    raw = {r["case"]: float(r["p_malignant"]) for r in read_table(tmp_path / "t1" / "predictions.csv")}
    middle = float(np.median(list(raw.values())))
    threshold = 1 / (1 + np.exp(-np.log(middle / (1 - middle)) / 3.0))  # the median case, calibrated at T = 3
    inference_evaluator(AREA, inputs, tmp_path / "t3", ckpt, explain=False, temperature=3.0,
                        threshold=float(threshold)).run()
    for row in read_table(tmp_path / "t3" / "predictions.csv"):
        p, q = float(row["p_malignant"]), raw[row["case"]]
        assert np.log(p / (1 - p)) == pytest.approx(np.log(q / (1 - q)) / 3.0, abs=1e-3)
        if abs(p - threshold) > 5e-6:
            assert row["label"] == str(int(p >= threshold))
    with pytest.raises(Exception) as info:
        inference_evaluator(AREA, inputs, tmp_path / "t0", ckpt, explain=False, temperature=0.0)
    assert "ValueError: temperature must be > 0" in describe(info.value)
    assert not (tmp_path / "t0").exists()


def test_inference_without_checkpoint_is_a_clear_error(tiny_data, tmp_path):
    from common.errors import describe

    missing = tmp_path / "no" / "model.pt"
    with pytest.raises(Exception) as info:
        inference_evaluator(AREA, tiny_data, tmp_path / "out", missing)
    assert "CheckpointError" in describe(info.value) and "train first" in describe(info.value)
    assert files_under(tmp_path / "out") == []
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception) as info:
        inference_evaluator(AREA, empty, tmp_path / "out", seeded_checkpoint(AREA, tmp_path / "model.pt"))
    assert "DatasetError" in describe(info.value) and "no *.dcm file" in describe(info.value)
    assert files_under(tmp_path / "out") == []


def _compressed_copy(source: Path, target: Path, syntax: str) -> None:
    """Re-encode a DICOM file losslessly: JPEG 2000 through pydicom's own encoder (pylibjpeg-openjpeg); JPEG-Lossless
    SV1 and JPEG-LS with imagecodecs (pydicom has no encoder for them), encapsulated as a scanner would."""
    import imagecodecs
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless

    ds = pydicom.dcmread(source)
    if syntax == "jpeg2000":
        ds.compress(JPEG2000Lossless)
    else:
        stored, bits = ds.pixel_array, int(ds.BitsStored)
        if syntax == "jpeg_lossless":
            frame = imagecodecs.jpeg8_encode(stored, lossless=True, predictor=1, bitspersample=bits)
            uid = JPEGLosslessSV1
        else:
            frame, uid = imagecodecs.jpegls_encode(stored, level=0), JPEGLSLossless
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid
    ds.save_as(target, enforce_file_format=True)


def test_compressed_dicom_crops_decode_to_the_same_pixels(tiny_data, tmp_path):
    """Issue 13 kind 6: JPEG-Lossless, JPEG-LS and JPEG 2000 crops (pylibjpeg plugins) give the uncompressed file's
    pixels through the breast reader, and the same network input and prediction at inference."""
    import pydicom

    dicom = mod("dicom")
    rows = read_table(tiny_data / TEST_CSV)
    picked = {}
    for row in rows:  # one MONOCHROME1 and one MONOCHROME2 crop, whatever their bit depth and rescale
        ds = pydicom.dcmread(tiny_data / row["cropped image file path"].strip(), stop_before_pixels=True)
        picked.setdefault(str(ds.PhotometricInterpretation), row["cropped image file path"].strip())
    assert set(picked) == {"MONOCHROME1", "MONOCHROME2"}
    inputs = tmp_path / "in"
    inputs.mkdir()
    for n, source in enumerate(sorted(picked.values())):
        shutil.copy(tiny_data / source, inputs / f"m{n}_raw.dcm")
        reference = dicom.read_dicom(inputs / f"m{n}_raw.dcm")
        for syntax in ("jpeg_lossless", "jpegls", "jpeg2000"):
            target = inputs / f"m{n}_{syntax}.dcm"
            _compressed_copy(inputs / f"m{n}_raw.dcm", target, syntax)
            assert pydicom.dcmread(target, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
            np.testing.assert_array_equal(dicom.read_dicom(target), reference)
    ckpt = seeded_checkpoint(AREA, tmp_path / "model.pt")
    parser = inference_parser(AREA, inputs, tmp_path / "out", ckpt, explain=False)
    preprocessing = parser.get_parsed_content("preprocessing")
    for n in range(2):
        raw = preprocessing({"image": str(inputs / f"m{n}_raw.dcm")})["image"]
        jpeg = preprocessing({"image": str(inputs / f"m{n}_jpeg_lossless.dcm")})["image"]
        assert torch.equal(torch.as_tensor(raw), torch.as_tensor(jpeg))
    parser.get_parsed_content("evaluator").run()
    probs = {r["case"]: float(r["p_malignant"]) for r in read_table(tmp_path / "out" / "predictions.csv")}
    assert len(probs) == 8
    for n in range(2):
        for syntax in ("jpeg_lossless", "jpegls", "jpeg2000"):
            assert probs[f"m{n}_{syntax}"] == pytest.approx(probs[f"m{n}_raw"], abs=1e-6)


# --------------------------------------------------------------------------------------------- workflows
def test_train_evaluate_infer_outputs(trained):
    from PIL import Image

    out, pred = trained["out"], trained["pred"]
    assert (out / "models" / "model.pt").is_file() and (out / "models" / "checkpoint_epoch=1.pt").is_file()
    splits = json.loads((out / "splits.json").read_text())
    assert splits["train"] and splits["validation"] and not set(splits["train"]) & set(splits["validation"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["key_metric"] == "auc" and metrics["num_cases"] == 8 and metrics["num_skipped_rows"] == 0
    for name in ("auc", "accuracy", "precision", "sensitivity", "specificity"):
        assert name in metrics and f"{name}_ci95" in metrics
    per_case = read_table(out / "metrics_per_case.csv")
    assert len(per_case) == 8 and set(per_case[0]) >= {"case", "label", "p_malignant", "predicted"}
    assert (out / "roc_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # issue 15: temperature and threshold fitted on the validation split, recorded beside the model, used by evaluate
    settings = json.loads((out / "models" / "model.json").read_text())
    assert settings["threshold_rule"] == "youden" and settings["temperature"] > 0 and 0 < settings["threshold"] < 1
    assert metrics["threshold"] == settings["threshold"] and metrics["temperature"] == settings["temperature"]
    assert metrics["threshold_rule"] == "youden"
    threshold = settings["threshold"]
    for row in per_case:
        p = float(row["p_malignant"])
        if abs(p - threshold) > 5e-6:  # the CSV keeps 6 significant digits
            assert int(row["predicted"]) == int(p >= threshold), (row, threshold)
    labels, predicted = [int(r["label"]) for r in per_case], [int(r["predicted"]) for r in per_case]
    assert metrics["accuracy"] == pytest.approx(np.mean(np.array(labels) == np.array(predicted)))
    at_half = [int(float(r["p_malignant"]) >= 0.5) for r in per_case]  # 0.5 means the same before calibration
    if all(abs(float(r["p_malignant"]) - 0.5) > 5e-6 for r in per_case):  # the CSV keeps 6 significant digits
        assert at_half == [int(float(r["p_malignant_uncalibrated"]) >= 0.5) for r in per_case]
        assert metrics["accuracy_at_0_5"] == pytest.approx(np.mean(np.array(labels) == np.array(at_half)))
    assert "sensitivity_at_0_5_ci95" in metrics and "specificity_at_0_5_ci95" in metrics
    for name in ("ece", "ece_uncalibrated", "brier"):
        assert 0.0 <= metrics[name] <= 1.0 and len(metrics[f"{name}_ci95"]) == 2
    from common.calibration import brier_score, expected_calibration_error

    probs = [float(r["p_malignant"]) for r in per_case]
    raw = [float(r["p_malignant_uncalibrated"]) for r in per_case]
    assert metrics["ece"] == pytest.approx(expected_calibration_error(probs, labels), abs=1e-5)
    assert metrics["ece_uncalibrated"] == pytest.approx(expected_calibration_error(raw, labels), abs=1e-5)
    assert metrics["brier"] == pytest.approx(brier_score(probs, labels), abs=1e-5)
    assert Image.open(out / "reliability.png").format == "PNG"
    # Grad-CAM faithfulness: every synthetic crop is cut around its ROI mask, so all 8 test masses count
    assert metrics["cam_in_lesion_num_cases"] == 8
    assert 0.0 <= metrics["cam_in_lesion"] <= 1.0 and 0.0 < metrics["lesion_area_fraction"] < 1.0
    rows = read_table(pred / "predictions.csv")
    assert list(rows[0]) == ["case", "p_benign", "p_malignant", "label"] and len(rows) == 8  # the test CSV
    per_case_by_name = {r["case"]: r for r in per_case}
    assert all(r["case"].startswith("Mass-Test_") for r in rows)
    for row in rows:
        assert float(row["p_benign"]) + float(row["p_malignant"]) == pytest.approx(1.0, abs=1e-5)
        if abs(float(row["p_malignant"]) - threshold) > 5e-6:  # inference labels at the recorded threshold
            assert row["label"] == str(int(float(row["p_malignant"]) >= threshold))
        # and gives evaluate's calibrated probability of the same mass (the test CSV's cases)
        assert float(row["p_malignant"]) == pytest.approx(float(per_case_by_name[row["case"]]["p_malignant"]),
                                                          abs=2e-5)
        overlay = np.asarray(Image.open(pred / "predictions" / f"{row['case']}_gradcam.png"))
        assert overlay.shape == (128, 128, 3)  # 32 x 32 network input, enlarged 4x
    assert not list(pred.rglob(".*.tmp*")) and not list(out.rglob(".*.tmp*"))


# --------------------------------------------------------------------------------------------- transfer (issue 16)
# CI: conformance fine-tunes every bundle with --freeze encoder (torchrun); mechanics: tests/common/test_transfer.py
@pytest.mark.slow
def test_fine_tune_from_the_shared_model_with_frozen_encoder(trained, tiny_data, tmp_path):
    """The standard train command with ``--pretrained_ckpt <shared tiny model.pt> --freeze encoder``: every tensor
    loads, the five convolution blocks (weights and BatchNorm statistics) come out bit-identical while the head
    trains, the settings reach model.json, MLflow params and the resumable checkpoint; a bad prefix ends the command
    with a last line naming it."""
    from mlflow import MlflowClient

    pretrained = trained["out"] / "models" / "model.pt"
    out = tmp_path / "finetune"
    proc = run_monai_bundle(["run", "--config_file", config_list(AREA, "train", "tiny"), "--dataset_dir", tiny_data,
                             "--output_dir", out, "--epochs", 1, "--pretrained_ckpt", pretrained, "--freeze", "encoder",
                             "--pretrained_lr_scale", 0.5, "--tracking", "mlflow"])
    before = torch.load(pretrained, map_location="cpu")
    after = torch.load(out / "models" / "model.pt", map_location="cpu")
    assert f"loaded {len(before)} of {len(before)} tensors" in proc.stdout + proc.stderr
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("features.")), "encoder moved"
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("head.")), "head did not train"
    settings = json.loads((out / "models" / "model.json").read_text())
    assert (settings["pretrained_ckpt"], settings["freeze"], settings["pretrained_lr_scale"]) == (
        str(pretrained), "encoder", 0.5)
    state = torch.load(out / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)
    assert state["frozen"] == [k for k in before if k.startswith("features.") and k.endswith((".weight", ".bias"))]
    lr = json.loads((REPO / "bundles" / AREA / "configs" / "train.json").read_text())["learning_rate"]
    assert [g["initial_lr"] for g in state["optimizer"]["param_groups"]] == [pytest.approx(0.5 * lr)]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    params = runs[0].data.params
    assert (params["freeze"], params["pretrained_lr_scale"], params["transfer.loaded"], params["transfer.frozen"]) == (
        "encoder", "0.5", str(len(before)), str(len(state["frozen"])))

    bad = run_monai_bundle(["run", "--config_file", config_list(AREA, "train", "tiny"), "--dataset_dir", tiny_data,
                            "--output_dir", tmp_path / "bad", "--epochs", 1, "--freeze", "featurez"], expect_ok=False)
    last = [line for line in bad.stderr.splitlines() if line.strip()][-1]
    assert bad.returncode != 0 and "'featurez'" in last and "['features', 'head']" in last, last


def test_scanner_shift_changes_the_image_not_the_anatomy():
    """Simulated scanners (site shift): the same seed gives the same mass (ROI, descriptors) on every scanner; "B"
    (gamma 0.6, blur 1.5 px, noise 0.035) brightens the image (x**0.6 > x on (0, 1)) and, before its stronger noise,
    smooths it; an unknown scanner is refused naming the known ones."""
    phantom = mod("phantom")
    cases = {s: phantom.render_case(np.random.default_rng(3), True, "CC", (160, 128), s) for s in ("A", "B", "C")}
    assert all(np.array_equal(cases["A"]["roi"], c["roi"]) and cases["A"]["shape"] == c["shape"]
               for c in cases.values())
    default = phantom.render_case(np.random.default_rng(3), True, "CC", (160, 128))
    assert np.array_equal(default["image"], cases["A"]["image"])
    inside = cases["A"]["image"] > 0.05
    assert cases["B"]["image"][inside].mean() > cases["A"]["image"][inside].mean() > cases["C"]["image"][inside].mean()
    with pytest.raises(ValueError, match=r"unknown scanner 'Z': choose one of \['A', 'B', 'C'\]"):
        phantom.synthesize("/nonexistent/never_written", num_cases=4, scanner="Z")


def test_both_synthetic_sets_refuse_bad_settings_before_writing(tmp_path):
    """``scripts.phantom.write_splits``, shared by the mass and the detection phantoms: each bad setting is named in
    its own error and nothing is written."""
    phantom, detection = mod("phantom"), mod("phantom_detection")
    cases = [(phantom.synthesize, {"num_cases": 1}, r"need num_cases >= 2 and image_size >= \[128, 96\], got 1 and "
                                                    r"\[256, 192\]\."),
             (phantom.synthesize, {"crop_margin": 2.5}, r"crop_margin must be in \[0, 2\], got 2\.5\."),
             (phantom.synthesize, {"malignant_fraction": 0.0}, r"malignant_fraction must be in \(0, 1\), got 0\.0\."),
             (detection.synthesize, {"num_cases": 3}, r"need num_cases >= 4 and image_size >= \[128, 96\], got 3 and "
                                                      r"\[512, 384\]\."),
             (detection.synthesize, {"image_size": (128, 95)}, r"got 120 and \[128, 95\]\."),
             (detection.synthesize, {"scanner": "Z"}, r"unknown scanner 'Z'")]
    for synthesize, settings, message in cases:
        with pytest.raises(ValueError, match=message):
            synthesize(tmp_path / "never", **settings)
    assert not (tmp_path / "never").exists()


def test_split_by_patient_keeps_views_together_records_extra_and_names_the_csv(tmp_path):
    """``scripts.data.split_by_patient``, the classifier's and the detector's split: two patients of two views each at
    ``val_fraction`` 0.5 give one patient per side; one patient cannot be split and the error names the train CSV."""
    data = mod("data")
    items = [{"case": f"{p}_{v}", "patient": p, "label": int(p == "P2")} for p in ("P1", "P2") for v in ("CC", "MLO")]
    strata = {i["case"]: i["label"] for i in items}
    split = data.split_by_patient(tmp_path, tmp_path, items, 0.5, 0, strata, {"skipped_rows": []})
    sides = [{i["patient"] for i in split[part]} for part in ("train", "validation")]
    assert len(sides[0]) == len(sides[1]) == 1 and sides[0] != sides[1]
    assert sum(len(split[part]) for part in ("train", "validation")) == 4
    record = json.loads((tmp_path / "splits.json").read_text())
    assert record["group_by"] == "patient" and record["skipped_rows"] == []
    assert sorted(record["train"] + record["validation"]) == sorted(i["case"] for i in items)
    with pytest.raises(ValueError) as error:
        data.split_by_patient(tmp_path / "other", None, items[:2], 0.5, 0, strata)
    assert str(error.value).splitlines()[-1] == (
        f"  - {tmp_path / 'other' / 'mass_case_description_train_set.csv'}: 2 case(s) of 1 patient(s) found; a "
        f"train/validation split needs at least 2 patients (one held out for validation, one trained on)")
