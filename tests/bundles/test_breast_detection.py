"""Tests of the breast bundle's second workflow: mass detection on full mammograms (issue 20).

Box extraction from ROI masks (several masses, touching masks, empty mask), the mapping of boxes from the detector's
grid back to the input DICOM's pixels, the FROC / AP50 / AUC computation on a hand-made table, the class merge, bad
data (mask of another size, mask without foreground, mass-free images as valid negatives), the same network from the
three configs, the evaluator form of inference (the inferer's table, its mapping to input pixels, a damaged DICOM and
an empty folder), and the outputs of the session's shared tiny synthesize -> train -> evaluate -> infer run of the
detection workflow (``tiny_pipeline(AREA, "detection")``, which the conformance harness also checks, torchrun
training included).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle_harness import BUNDLES, import_bundle_module

AREA = "breast"


def mod(name: str):
    return import_bundle_module(AREA, name)


# --------------------------------------------------------------------------------------------- boxes from masks
def test_boxes_from_several_and_touching_masks():
    det = mod("detection")
    a = np.zeros((20, 30), bool)
    a[2:6, 3:9] = True  # rows 2..5, cols 3..8
    b = np.zeros((20, 30), bool)
    b[6:10, 5:12] = True  # touches a (row 6 below row 5): still its own box
    c = np.zeros((20, 30), bool)
    c[12:14, 1:3] = True
    c[15:18, 20:25] = True  # one abnormality in two pieces: one box around both
    boxes = det.masks_to_boxes([a, b, c], ["a.dcm", "b.dcm", "c.dcm"])
    assert boxes.tolist() == [[2, 3, 6, 9], [6, 5, 10, 12], [12, 1, 18, 25]]  # (row0, col0, row1, col1), edges
    assert det.masks_to_boxes([]).shape == (0, 4)
    with pytest.raises(ValueError, match=r"empty_mask\.dcm: ROI mask has no foreground"):
        det.masks_to_boxes([a, np.zeros((20, 30), bool)], ["a.dcm", "empty_mask.dcm"])
    assert det.mask_foreground(np.array([[0.0, 255.0], [0.0, 0.0]])).tolist() == [[False, True], [False, False]]


# --------------------------------------------------------------------------------------------- coordinates
def test_grid_boxes_map_back_to_input_pixels():
    det = mod("detection")
    assert det.grid_shape((512, 384), 0.5) == (256, 192)
    # grid (row0, col0, row1, col1) = (10, 20, 30, 40) at half size -> input x = cols * 2, y = rows * 2
    assert det.to_input_boxes(np.array([[10, 20, 30, 40]]), (512, 384), (256, 192)).tolist() == [[40, 20, 80, 60]]
    # odd sizes: grid (50, 38) of a (101, 77) input; the whole grid is the whole image; outside parts are clipped
    grid = det.grid_shape((101, 77), 0.5)
    assert grid == (50, 38)
    assert det.to_input_boxes(np.array([[0, 0, 50, 38], [-5, -3, 60, 45]]), (101, 77), grid).tolist() == \
        [[0, 0, 77, 101], [0, 0, 77, 101]]
    there = det.to_grid_boxes(np.array([[11, 7, 31, 22]]), (101, 77), grid)
    back = det.to_input_boxes(there, (101, 77), grid)
    assert np.allclose(back, [[7, 11, 22, 31]], atol=1e-4)  # round trip, in x/y order
    with pytest.raises(ValueError, match="scale"):
        det.grid_shape((10, 10), 1.5)


# --------------------------------------------------------------------------------------------- metrics
def _rows():
    """Three images, three masses (L1 benign and L2 malignant in A, L3 malignant in B), C without a mass.

    A: 0.9 hits L1 (p_mal 0.2), 0.8 FP, 0.7 hits L1 again (duplicate), 0.6 hits L2 (p_mal 0.7);
    B: 0.5 FP, 0.4 FP (L3 missed); C: 0.3 FP. Columns: score, p_malignant, hit (IoU >= 0.3), hit50 (one-to-one).
    """
    return [{"case": "A", "lesions": json.dumps([0, 1]),
             "detections": json.dumps([[0.9, 0.2, 0, 0], [0.8, 0.5, -1, -1], [0.7, 0.9, 0, -1], [0.6, 0.7, 1, 1]])},
            {"case": "B", "lesions": json.dumps([1]), "detections": json.dumps([[0.5, 0.5, -1, -1],
                                                                              [0.4, 0.5, -1, -1]])},
            {"case": "C", "lesions": json.dumps([]), "detections": json.dumps([[0.3, 0.5, -1, -1]])}]


def test_froc_ap50_and_auc_on_a_hand_made_table():
    det = mod("detection")
    rows = _rows()
    fps, sens = det.froc_curve(rows)
    # thresholds 0.9, 0.8, 0.6, 0.5, 0.4, 0.3 on 3 images and 3 masses; the duplicate hit (0.7) is neither TP nor FP
    assert np.allclose(fps, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1, 4 / 3])
    assert np.allclose(sens, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    # at 0.25 FP/image only (0, 1/3) qualifies -> 1/3; at 0.5 .. 8 -> 2/3: mean (1/3 + 5 * 2/3) / 6 = 11/18
    assert det.froc(rows) == pytest.approx(11 / 18)
    assert det.sensitivity_at_1fp(rows) == pytest.approx(2 / 3)
    # AP50 over 0.9 TP, 0.8 FP, 0.7 FP (L1 taken), 0.6 TP, 0.5/0.4/0.3 FP, 3 masses: 1/3 * 1 + 1/3 * 0.5
    assert det.ap50(rows) == pytest.approx(0.5)
    assert det.auc_malignant(rows) == pytest.approx(1.0)  # found: L1 benign p=0.2, L2 malignant p=0.7
    empty = [{"case": "C", "lesions": "[]", "detections": "[[0.3, 0.5, -1, -1]]"}]
    assert det.froc(empty) is None and det.ap50(empty) is None


def test_image_row_matches_at_iou_03_and_one_to_one_at_05():
    det = mod("detection")
    gt = np.array([[0, 0, 10, 10]])
    found = [{"box": [0, 0, 10, 10], "score": 0.9, "p_malignant": 0.1},
             {"box": [0, 0, 10, 10], "score": 0.8, "p_malignant": 0.1},  # duplicate: hit, no second AP match
             {"box": [5, 0, 15, 10], "score": 0.7, "p_malignant": 0.1},  # IoU 50 / 150 = 1/3: a hit, below 0.5
             {"box": [40, 40, 50, 50], "score": 0.6, "p_malignant": 0.1}]
    row = det.image_row("x", found, gt, [1])
    assert [d[2:] for d in json.loads(row["detections"])] == [[0, 0], [0, -1], [0, -1], [-1, -1]]
    assert (row["num_masses"], row["num_detections"], row["found"]) == (1, 4, 1)


def test_classes_merged_into_one_detection_per_mass():
    det = mod("detection")
    merged = det.merge_classes(np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]]), np.array([0, 1, 1]),
                               np.array([0.6, 0.3, 0.4]))
    assert [(m["label"], m["score"]) for m in merged] == [("benign", 0.6), ("malignant", 0.4)]
    assert merged[0]["p_malignant"] == pytest.approx(0.3 / 0.9)
    assert merged[1]["p_malignant"] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------- data and bad input
@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    """A small detection phantom (4 training, 8 test mammograms of 128 x 96), written in-process."""
    root = tmp_path_factory.mktemp("det_data") / "data"
    mod("phantom_detection").synthesize(root, num_cases=4, seed=3, image_size=(128, 96))
    return root


def test_phantom_layout_several_masses_and_negatives(small_set):
    det = mod("detection")
    items = det.evaluation_cases(small_set)
    assert len(items) == 8
    counts = [len(i["boxes"]) for i in items]
    assert max(counts) >= 2 and min(counts) == 0  # several masses in one image; mass-free images are kept
    negatives = [i for i in items if not i["boxes"]]
    assert all(i["case"].startswith("Calc-Test_") for i in negatives)
    for item in items:
        assert len(item["labels"]) == len(item["boxes"]) and item["input_shape"] == [128, 96]
        for r0, c0, r1, c1 in item["boxes"]:
            assert 0 <= r0 < r1 <= 128 and 0 <= c0 < c1 <= 96


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _first_mask(root: Path) -> Path:
    with open(root / "mass_case_description_test_set.csv", newline="") as f:
        return root / next(csv.DictReader(f))["ROI mask file path"].strip()


def test_empty_mask_and_mask_of_another_size_are_named(small_set, tmp_path):
    det, dicom = mod("detection"), mod("dicom")
    from common.validation import DatasetError

    empty = _copy(small_set, tmp_path / "empty")
    mask = _first_mask(empty)
    dicom.write_dicom(mask, np.zeros((128, 96)), bits_stored=8, description="ROI mask images")
    with pytest.raises(DatasetError, match=r"(?s)000001\.dcm.*no foreground"):
        det.validate(empty, ["test"])
    other = _copy(small_set, tmp_path / "other")
    mask = _first_mask(other)
    dicom.write_dicom(mask, np.full((64, 48), 255.0), bits_stored=8, description="ROI mask images")
    with pytest.raises(DatasetError, match=r"(?s)000001\.dcm.*\(64, 48\).*differ in size"):
        det.validate(other, ["test"])


def test_box_outside_the_image_is_refused(small_set):
    det = mod("detection")
    item = det.evaluation_cases(small_set)[0]
    with pytest.raises(ValueError, match="outside"):
        det.LoadMammogramd(0.5)({"image": item["image"], "boxes": [[100, 10, 140, 30]], "labels": [1]})


def test_three_configs_build_the_same_detector(tmp_path):
    from monai.bundle import ConfigParser

    mod("detection")
    built = {}
    for names in (("train_detection",), ("train_detection", "evaluate_detection"), ("inference_detection",)):
        parser = ConfigParser()
        parser.read_config([str(BUNDLES / AREA / "configs" / f"{n}.json") for n in names])
        parser["ckpt_path"] = str(tmp_path / "elsewhere" / "model.pt")
        net = parser.get_parsed_content("network_def")
        built[names] = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert len({json.dumps(v, sort_keys=True) for v in built.values()}) == 1


# --------------------------------------------------------------------------------------------- inference pieces
def test_inferer_table_maps_back_to_input_pixels_above_the_threshold():
    det = mod("detection")
    found = [[{"box": [10.0, 20.0, 30.0, 40.0], "score": 0.9, "label": "malignant", "p_malignant": 0.8},
              {"box": [-10.0, -10.0, -2.0, -2.0], "score": 0.7, "label": "benign", "p_malignant": 0.1},
              {"box": [0.0, 0.0, 5.0, 5.0], "score": 0.2, "label": "benign", "p_malignant": 0.3}], []]
    table = det.detection_table(found)
    assert table.shape == (2, 3, 7) and table.dtype == torch.float64
    assert torch.isnan(table[1]).all()  # the second image has no detection: padding only
    assert det.table_detections(table[0]) == found[0] and det.table_detections(table[1]) == []
    case = {"pred": table[0], "input_shape": [512, 384], "grid_shape": [256, 192]}
    # grid rows 10..30, cols 20..40 at half size -> input y 20..60, x 40..80; the second box lies wholly outside the
    # image (clipped to nothing: dropped); the third scores below 0.3
    assert det.InputDetectionsd(0.3)(case)["pred"] == [
        {"x_min": 40.0, "y_min": 20.0, "x_max": 80.0, "y_max": 60.0, "label": "malignant", "score": 0.9,
         "p_malignant": 0.8}]
    assert len(det.InputDetectionsd(0.0)(case)["pred"]) == 2
    with pytest.raises(ValueError, match="score_threshold must be in"):
        det.InputDetectionsd(1.5)


# --------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_run(tiny_pipeline) -> dict:
    """The session's shared tiny detection run (``bundle_harness.build_tiny_pipeline``: synthesize with tiny.json's
    sizes -> train 1 epoch -> evaluate -> infer with tiny.json's ``score_threshold`` 0, inside a copy of the bundle);
    read-only."""
    return tiny_pipeline(AREA, "detection")


def test_tiny_run_writes_metrics_curve_detections_and_overlays(tiny_run):
    det = mod("detection")
    out, pred = tiny_run["out"], tiny_run["pred"]
    settings = json.loads((out / "models" / "model.json").read_text())
    assert settings["workflow"] == "detection" and settings["channels"] == [4, 8, 8, 16, 16]  # tiny.json's widths
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["key_metric"] == "froc" and metrics["num_cases"] == 8
    for key in ("froc", "ap50", "sensitivity_at_1fp"):
        assert 0.0 <= metrics[key] <= 1.0
        assert metrics[f"{key}_ci95"][0] <= metrics[key] <= metrics[f"{key}_ci95"][1]
    assert (out / "froc_curve.png").stat().st_size > 1000
    with open(pred / "detections.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["image", "x_min", "y_min", "x_max", "y_max", "label", "score"]
    assert rows, "score_threshold 0 (tiny.json) keeps every detection"
    images = {i["case"]: i for i in det.evaluation_cases(tiny_run["data"])}
    for row in rows:
        h, w = images[row["image"]]["input_shape"]
        x0, y0, x1, y1 = (float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h  # pixels of the input DICOM (160 x 128 in tiny.json)
        assert row["label"] in ("benign", "malignant") and 0.0 <= float(row["score"]) <= 1.0
    scores = {}
    for row in rows:
        scores.setdefault(row["image"], []).append(float(row["score"]))
    assert all(s == sorted(s, reverse=True) for s in scores.values()), "an image's rows are in score order"
    pngs = sorted(p.name for p in (pred / "predictions").iterdir())
    assert pngs == sorted(f"{case}_detections.png" for case in images)


def _evaluator(input_dir: Path, output_dir: Path, ckpt: Path, score_threshold: float):
    """``inference_detection.json``'s evaluator, parsed in this interpreter (``run()`` detects)."""
    from monai.bundle import ConfigParser

    mod("inference")
    mod("inference_detection")
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / AREA / "configs" / "inference_detection.json"))
    parser.update({"bundle_root": str(BUNDLES / AREA), "input_dir": str(input_dir), "output_dir": str(output_dir),
                   "ckpt_path": str(ckpt), "score_threshold": score_threshold})
    return parser.get_parsed_content("evaluator")


def test_damaged_dicom_is_named_and_the_good_image_is_written(tiny_run, tmp_path):
    """A damaged DICOM among the inputs: the others are detected on and written, then the run fails naming it; with
    ``score_threshold`` 1 the good image is a valid negative (a header-only table and a "no mass" overlay)."""
    from common.validation import BatchFailure

    good = next(i for i in mod("detection").evaluation_cases(tiny_run["data"]) if i["boxes"])
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.dcm").write_bytes(Path(good["image"]).read_bytes())
    (folder / "damaged.dcm").write_bytes(b"this is not an image file at all\n" * 8)
    out = tmp_path / "out"
    failed = r"(?s)1 input\(s\) failed \(1 processed\).*damaged\.dcm.*not a readable DICOM"
    with pytest.raises(BatchFailure, match=failed):
        _evaluator(folder, out, tiny_run["out"] / "models" / "model.pt", 1.0).run()
    assert (out / "detections.csv").read_text().splitlines() == [",".join(mod("detection").DETECTION_COLUMNS)]
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["good_detections.png"]
    assert not list(out.rglob(".*.tmp*")), "temporary files left behind"


def test_empty_folder_is_refused_before_anything_is_written(tiny_run, tmp_path):
    """The folder is listed when the evaluator's dataset is built: the error (under MONAI's instantiation wrapper,
    which ``common.errors`` looks through for the last line) names the folder and what was expected."""
    from common.errors import root_cause
    from common.validation import DatasetError

    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception) as raised:
        _evaluator(tmp_path / "empty", tmp_path / "out", tiny_run["out"] / "models" / "model.pt", 0.3)
    cause = root_cause(raised.value)
    assert isinstance(cause, DatasetError), repr(raised.value)
    assert re.search(r"empty: no \*\.dcm file and no mass_case_description_.* to detect on", str(cause)), str(cause)
    assert not (tmp_path / "out").exists()
