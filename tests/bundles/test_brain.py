"""Brain bundle: phantom, label/region conventions, metrics, NIfTI geometry, bad inputs, distributed training.

Whole workflows run in subprocesses (each bundle's ``scripts`` package needs its own interpreter); one tiny dataset
and one tiny trained checkpoint are shared by the module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle_harness import REPO, config_list, run_monai_bundle

AREA = "brain"
TINY = json.loads((REPO / "bundles" / AREA / "configs" / "tiny.json").read_text())
SEQUENCES = ("t1", "t1ce", "t2", "flair")


@pytest.fixture(scope="module")
def mods():
    from bundle_harness import import_bundle_module

    return {name: import_bundle_module(AREA, name)
            for name in ("phantom", "data", "transforms", "metrics", "inference", "postprocessing")}


@pytest.fixture(scope="module")
def tiny_data(tiny_pipeline):
    """Four tiny synthetic cases written through the bundle's own synthesize command (shared, read-only)."""
    return tiny_pipeline(AREA)["data"]


@pytest.fixture(scope="module")
def trained(tiny_pipeline):
    """Output folder of the shared tiny run: 1 epoch of training, then evaluate on ``tiny_data`` (read-only)."""
    return tiny_pipeline(AREA)["out"]


# ---------------------------------------------------------------------------------------------------------------------
# phantom
# ---------------------------------------------------------------------------------------------------------------------
def test_phantom_is_deterministic_and_seeded(mods):
    phantom = mods["phantom"]
    a_images, a_label, a_affine = phantom.make_case(3, 1, spacing=7.0)
    b_images, b_label, b_affine = phantom.make_case(3, 1, spacing=7.0)
    c_images, c_label, _ = phantom.make_case(4, 1, spacing=7.0)
    for seq in SEQUENCES:
        np.testing.assert_array_equal(a_images[seq], b_images[seq])
    np.testing.assert_array_equal(a_label, b_label)
    np.testing.assert_array_equal(a_affine, b_affine)
    assert not np.array_equal(a_images["flair"], c_images["flair"]), "another seed must give another case"


def test_smooth_noise_is_scipys_3d_cubic_zoom(mods):
    """The axis-by-axis upsampling gives the field of ``ndimage.zoom`` on the coarse grid (the phantom's textures and
    bias fields, and so every written case, are those of the 3D zoom it replaced)."""
    from scipy import ndimage

    phantom = mods["phantom"]
    for cells, shape in ((3, (9, 13, 7)), (6, (56, 69, 58))):
        field = phantom._smooth_noise(shape, np.random.default_rng(7), cells=cells)
        coarse = np.random.default_rng(7).standard_normal((cells,) * 3)
        expected = ndimage.zoom(coarse, [n / cells for n in shape], order=3, mode="nearest")
        expected = (expected / (np.abs(expected).max() + 1e-8)).astype(np.float32)
        assert field.shape == shape and field.dtype == np.float32
        np.testing.assert_allclose(field, expected, rtol=0, atol=1e-6)


def test_scanner_response_hand_computed(mods):
    phantom = mods["phantom"]
    image = np.full((3, 1, 1), 0.25, np.float32)
    assert phantom.apply_scanner(image, "A") is image  # the default scanner leaves the image as it was
    # "B": 0.25 ** 0.6 = 0.43528, times exp(0.4 * u) with u = -1, 0, 1 along x
    expected = 0.25 ** 0.6 * np.exp(0.4 * np.array([-1.0, 0.0, 1.0]))
    np.testing.assert_allclose(phantom.apply_scanner(image, "B")[:, 0, 0], expected, rtol=1e-6)
    # "C": 0.25 ** 1.5 = 0.125, times exp(-0.3 * u) along z
    np.testing.assert_allclose(phantom.apply_scanner(image.reshape(1, 1, 3), "C")[0, 0],
                               0.125 * np.exp(-0.3 * np.array([-1.0, 0.0, 1.0])), rtol=1e-6)
    with pytest.raises(ValueError, match=r"unknown scanner 'Z': choose one of \['A', 'B', 'C'\]"):
        phantom.write_dataset("/nonexistent/never_written", num_cases=1, scanner="Z")


def test_scanner_shift_changes_contrast_and_bias_not_the_anatomy(mods):
    phantom = mods["phantom"]
    cases = {s: phantom.make_case(3, 1, spacing=7.0, scanner=s) for s in ("A", "B", "C")}
    default = phantom.make_case(3, 1, spacing=7.0)
    again = phantom.make_case(3, 1, spacing=7.0, scanner="B")
    for seq in SEQUENCES:
        np.testing.assert_array_equal(default[0][seq], cases["A"][0][seq])
        np.testing.assert_array_equal(again[0][seq], cases["B"][0][seq])  # one scanner: deterministic
    for images, label, affine in cases.values():
        np.testing.assert_array_equal(label, cases["A"][1])
        np.testing.assert_array_equal(affine, cases["A"][2])
    t1 = {s: c[0]["t1"].astype(np.float64) for s, c in cases.items()}
    assert not np.array_equal(t1["A"], t1["B"]) and not np.array_equal(t1["A"], t1["C"])
    # voxel by voxel, log(S / A) = (contrast - 1) log I + bias u: the case's own field, scale and noise draws cancel
    # (the same draws on every scanner). A least-squares fit on u and log A (A stands for the noise-free I, so the
    # contrast coefficient is diluted towards 0 by the case's bias field and noise) over the brighter 70 % of the head
    head = t1["A"] > 0
    voxels = head & (t1["A"] > np.percentile(t1["A"][head], 30))
    for scanner in ("B", "C"):
        response = phantom.SCANNERS[scanner]
        n = t1["A"].shape[response["axis"]]
        u = np.linspace(-1.0, 1.0, n).reshape([n if a == response["axis"] else 1 for a in range(3)]) + 0 * t1["A"]
        log_a = np.log(t1["A"][voxels])
        design = np.stack([u[voxels], log_a - log_a.mean(), np.ones_like(log_a)], axis=1)
        bias, contrast, _ = np.linalg.lstsq(design, np.log(t1[scanner][voxels] / t1["A"][voxels]), rcond=None)[0]
        assert bias == pytest.approx(response["bias"], abs=0.05), (scanner, bias)  # B: +0.4 along x; C: -0.3 along z
        low, high = sorted((0.5 * (response["contrast"] - 1), response["contrast"] - 1))
        assert low <= contrast <= high, (scanner, contrast)  # B: flatter (0.6 - 1 = -0.4); C: harder (+0.5)


def test_phantom_layout_and_label_convention(tiny_data):
    cases = sorted(p.name for p in tiny_data.iterdir())
    assert cases == [f"BraTS2021_{i:05d}" for i in range(TINY["num_cases"])]
    for case in cases:
        names = sorted(p.name for p in (tiny_data / case).iterdir())
        assert names == sorted(f"{case}_{s}.nii.gz" for s in (*SEQUENCES, "seg"))
        seg = nib.load(tiny_data / case / f"{case}_seg.nii.gz")
        t1 = nib.load(tiny_data / case / f"{case}_t1.nii.gz")
        assert seg.shape == t1.shape and np.allclose(seg.affine, t1.affine)
        assert nib.aff2axcodes(t1.affine) == ("L", "P", "S"), "written with the BraTS-like LPS affine"
        values = set(np.unique(np.asarray(seg.dataobj)).tolist())
        assert values <= {0, 1, 2, 4} and 2 in values, f"{case}: labels {values}"


def test_phantom_subregions_need_several_sequences(mods):
    """ET stands out from oedema only on T1ce; oedema from ET on FLAIR; the core from oedema on T1ce and T2."""
    images, label, _ = mods["phantom"].make_case(0, 0, spacing=3.0)
    mean = {s: {k: float(images[s][label == v].mean()) for k, v in (("ncr", 1), ("ed", 2), ("et", 4))}
            for s in SEQUENCES}
    assert mean["t1ce"]["et"] > 1.8 * mean["t1ce"]["ed"]
    assert mean["t1"]["et"] < 1.4 * mean["t1"]["ed"]
    assert mean["flair"]["ed"] > 1.05 * mean["flair"]["et"]
    assert mean["t1ce"]["ncr"] < 0.8 * mean["t1ce"]["ed"] and mean["t2"]["ncr"] > mean["t2"]["ed"]


# ---------------------------------------------------------------------------------------------------------------------
# label ↔ region conventions and metrics
# ---------------------------------------------------------------------------------------------------------------------
def test_label_region_round_trip(mods):
    from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

    rng = np.random.default_rng(0)
    label = rng.choice(np.array([0, 1, 2, 4], dtype=np.uint8), size=(1, 6, 5, 4))
    regions = ConvertToMultiChannelBasedOnBratsClasses()(torch.as_tensor(label))
    back = mods["transforms"].RegionsToBratsLabels()(regions.float())
    np.testing.assert_array_equal(np.asarray(back), label)
    np.testing.assert_array_equal(mods["metrics"].labels_to_regions(label[0]), np.asarray(regions).astype(bool))


def test_regions_to_labels_by_hand(mods):
    regions = torch.zeros(3, 1, 1, 4)
    regions[:, 0, 0, 0] = torch.tensor([1.0, 1.0, 1.0])  # TC, WT, ET → 4
    regions[:, 0, 0, 1] = torch.tensor([1.0, 1.0, 0.0])  # TC, WT → 1
    regions[:, 0, 0, 2] = torch.tensor([0.0, 1.0, 0.0])  # WT only → 2
    regions[:, 0, 0, 3] = torch.tensor([0.0, 0.0, 1.0])  # ET outside WT: still enhancing tumour → 4
    assert mods["transforms"].RegionsToBratsLabels()(regions)[0, 0, 0].tolist() == [4, 1, 2, 4]
    with pytest.raises(ValueError, match="3 region channels"):
        mods["transforms"].RegionsToBratsLabels()(torch.zeros(2, 2, 2, 2))


def test_dice_and_hd95_by_hand(mods):
    m = mods["metrics"]
    a = np.zeros((10, 1, 1), bool)
    b = np.zeros((10, 1, 1), bool)
    a[2:6] = True  # 4 voxels
    b[4:8] = True  # 4 voxels, 2 shared
    assert m.dice(a, b) == pytest.approx(2 * 2 / 8)
    assert m.dice(np.zeros_like(a), np.zeros_like(b)) == 1.0
    assert m.dice(a, np.zeros_like(b)) == 0.0
    # a 1-voxel-thick line is all surface: a = {2..5}, b = {4..7}; distances a→b = {2, 1, 0, 0} voxels = {6, 3, 0, 0}
    # mm along axis 0 (3 mm); linear 95th percentile of [0, 0, 3, 6] = 3 + 0.85 * 3 = 5.55; b→a is symmetric
    assert m.hd95(a, b, spacing=(3.0, 1.0, 1.0)) == pytest.approx(5.55, abs=1e-4)
    assert m.hd95(a, np.zeros_like(b), spacing=(1, 1, 1)) is None
    row = m.region_metrics(np.stack([a, a, np.zeros_like(a)]), np.stack([b, b, np.zeros_like(b)]), (1, 1, 1))
    assert row["dice_et"] == 1.0 and row["hd95_et"] is None
    assert row["mean_dice"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)


# ---------------------------------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------------------------
# workflows: training split, evaluation in the input's grid, prediction geometry
# ---------------------------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------------------------
# post-processing fitted on the validation split
# ---------------------------------------------------------------------------------------------------------------------
def _blobs() -> tuple[np.ndarray, np.ndarray]:
    """WT channel: a 3x3x3 tumour (truth and prediction) and a 2-voxel false positive touching itself diagonally."""
    truth = np.zeros((3, 10, 10, 10), dtype=bool)
    truth[1, 1:4, 1:4, 1:4] = True
    prob = np.zeros((3, 10, 10, 10), dtype=np.float32)
    prob[1, 1:4, 1:4, 1:4] = 0.9
    prob[1, 7, 7, 7] = prob[1, 8, 8, 8] = 0.9  # one 26-connected component of 2 voxels
    return prob, truth


def test_small_components_are_removed_by_volume_in_mm3(mods):
    post = mods["postprocessing"]
    prob, truth = _blobs()
    # voxel 2 mm³: the blob is 4 mm³, the tumour 54 mm³
    kept = post.postprocess(prob, 2.0, min_component_mm3=[0.0, 10.0, 0.0])
    np.testing.assert_array_equal(kept, truth)
    np.testing.assert_array_equal(post.postprocess(prob, 2.0, min_component_mm3=[0.0, 4.0, 0.0])[1], prob[1] > 0)
    assert not post.postprocess(prob, 2.0, min_component_mm3=[0.0, 54.5, 0.0]).any()  # the tumour too: 54 < 54.5
    assert post.voxel_volume_mm3(np.diag([2.0, -1.0, 1.5, 1.0])) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="one value per region"):
        post.postprocess(prob, 1.0, thresholds=[0.5, 0.5])


def test_a_region_below_its_minimum_volume_is_emptied_and_the_others_stay(mods):
    post = mods["postprocessing"]
    prob = np.zeros((3, 10, 10, 10), dtype=np.float32)
    prob[:2, 1:4, 1:4, 1:4] = 0.9  # TC and WT: 27 voxels
    prob[2, 2, 2, 1:4] = 0.9  # ET: 3 voxels = 6 mm³ at 2 mm³ per voxel
    np.testing.assert_array_equal(post.postprocess(prob, 2.0, min_region_mm3=[0.0, 0.0, 6.0]), prob > 0.5)
    emptied = post.postprocess(prob, 2.0, min_region_mm3=[0.0, 0.0, 6.5])
    assert not emptied[2].any()  # ET becomes necrosis: TC (and WT) unchanged
    np.testing.assert_array_equal(emptied[:2], prob[:2] > 0.5)
    assert not post.postprocess(prob, 2.0, min_region_mm3=[54.5, 0.0, 0.0])[0].any()  # TC: 54 mm³ < 54.5


def test_postprocessing_fit_empties_small_et_for_a_case_without_enhancement(mods):
    post = mods["postprocessing"]
    # voxel 60 mm³. Case A has no ET and a false ET of 3 voxels (180 mm³). Case B has a true ET of a 27-voxel block
    # (1620 mm³) and a separate true 3-voxel part (180 mm³), both predicted. Removing components below 250 mm³ would
    # cost B's small part (ET Dice (1 + 54/57) / 2); emptying ET below 250-1000 mm³ in all scores 1 on both.
    prob_a, truth_a = np.zeros((3, 12, 12, 12), np.float32), np.zeros((3, 12, 12, 12), bool)
    prob_a[2, 8, 8, 1:4] = 0.9
    prob_b, truth_b = prob_a.copy(), truth_a.copy()
    prob_b[2, 1:4, 1:4, 1:4] = 0.9
    truth_b[2] = prob_b[2] > 0.5
    result = post.fit([(prob_a, truth_a, 60.0), (prob_b, truth_b, 60.0)])
    assert result["min_region_mm3"] == [0.0, 0.0, 250.0]  # the smallest of the tied 250, 500, 1000
    assert result["min_component_mm3"] == [0.0, 0.0, 0.0]
    assert result["validation_dice_before"][2] == pytest.approx(0.5)
    assert result["validation_dice_after"] == pytest.approx([1.0, 1.0, 1.0])


def _core_and_rim_case(core_z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Region probabilities 3HWD (TC, WT and ET all 0.9 on one 3x3x3 block, ET also 0.8 on a bright 2x2x2 block) and
    the 4HWD z-scored image whose T1ce (channel 1) is ``core_z`` on the 3x3x3 block and 2.0 on the 2x2x2 block."""
    prob = np.zeros((3, 10, 10, 10), dtype=np.float32)
    prob[:, 1:4, 1:4, 1:4] = 0.9
    prob[2, 6:8, 6:8, 6:8] = 0.8
    image = np.zeros((4, 10, 10, 10), dtype=np.float32)
    image[1, 1:4, 1:4, 1:4] = core_z
    image[1, 6:8, 6:8, 6:8] = 2.0
    return prob, image


def test_an_et_component_that_does_not_enhance_becomes_necrosis(mods):
    from monai.data import MetaTensor

    post = mods["postprocessing"]
    # the 3x3x3 ET component: 13 voxels at T1ce z 1.0 and 14 at -1.0, so its median is -1.0 (its mean, -1/27, is not)
    core_z = np.where(np.arange(27).reshape(3, 3, 3) < 13, 1.0, -1.0)
    prob, image = _core_and_rim_case(core_z)

    def run(min_enhancement, threshold=0.5):
        data = {"pred": MetaTensor(torch.from_numpy(prob.copy())), "image": MetaTensor(torch.from_numpy(image))}
        return post.RemoveNonEnhancingETd("pred", threshold=threshold, min_enhancement=min_enhancement)(data)["pred"]

    out = run(-0.5)  # median -1.0 < -0.5: the component leaves ET; the bright one (median 2.0) stays
    assert isinstance(out, MetaTensor)
    expected = prob.copy()
    expected[2, 1:4, 1:4, 1:4] = 0.0
    np.testing.assert_array_equal(out.numpy(), expected)  # TC and WT unchanged: those voxels are now necrosis
    np.testing.assert_array_equal(run(-1.0).numpy(), prob)  # median -1.0 >= -1.0: kept
    np.testing.assert_array_equal(run(None).numpy(), prob)  # the rule off changes nothing
    np.testing.assert_array_equal(run("off").numpy(), prob)  # the command line's off (monai.bundle drops None)
    with pytest.raises(ValueError, match="must be a T1ce z-score or 'off', got 'none at all'"):
        post.RemoveNonEnhancingETd("pred", min_enhancement="none at all")
    assert not run(2.5)[2].any()  # both components below 2.5
    # at threshold 0.85 the 0.8 block is no ET component: the rule leaves it, and removes only the 0.9 block
    np.testing.assert_array_equal(run(2.5, threshold=0.85)[2].numpy(), np.where(prob[2] == 0.8, prob[2], 0.0))
    mask = prob[2] >= 0.5
    kept = post.remove_non_enhancing_components(mask, image[1], -0.5)
    np.testing.assert_array_equal(kept, expected[2] > 0)
    with pytest.raises(ValueError, match="not on the prediction's grid"):
        post.remove_non_enhancing_components(mask, image[1, :9], -0.5)
    bad = {"pred": MetaTensor(torch.from_numpy(prob)),
           "image": MetaTensor(torch.zeros(4, 9, 10, 10), meta={"filename_or_obj": "/d/case_t1ce.nii.gz"})}
    with pytest.raises(ValueError, match=r"/d/case_t1ce.nii.gz: the enhancement image \(9, 10, 10\)"):
        post.RemoveNonEnhancingETd("pred", min_enhancement=0.0)(bad)


def test_postprocessing_fit_learns_the_enhancement_rule_from_a_case_without_enhancement(mods):
    post = mods["postprocessing"]
    # voxel 60 mm³. Case A has no ET; the network calls its dark core (T1ce z -1.0, 27 voxels) ET. Case B's true ET is
    # a bright 27-voxel block (z 1.5), predicted. Both are 1620 mm³, so no volume separates them; ET Dice is 0 on A
    # and 1 on B (mean 0.5) unless the rule removes A's component: any minimum enhancement in (-1.0, 1.5] scores 1 on
    # both, and the fit keeps the lowest such candidate, -0.5 (-1.0 keeps A's component: -1.0 >= -1.0).
    prob = np.zeros((3, 12, 12, 12), np.float32)
    prob[:, 1:4, 1:4, 1:4] = 0.9
    truth_a = prob > 0.5
    truth_a[2] = False
    truth_b = prob > 0.5
    z_a, z_b = np.zeros((12, 12, 12), np.float32), np.zeros((12, 12, 12), np.float32)
    z_a[1:4, 1:4, 1:4], z_b[1:4, 1:4, 1:4] = -1.0, 1.5
    result = post.fit([(prob, truth_a, 60.0, z_a), (prob, truth_b, 60.0, z_b)])
    assert result["min_et_enhancement"] == -0.5
    assert result["min_region_mm3"] == [0.0, 0.0, 0.0] and result["min_component_mm3"] == [0.0, 0.0, 0.0]
    assert result["validation_dice_before"] == pytest.approx([1.0, 1.0, 0.5])
    assert result["validation_dice_after"] == pytest.approx([1.0, 1.0, 1.0])
    # without the T1ce the rule is not searched, and it is off where nothing needs it (ties go to off)
    assert post.fit([(prob, truth_a, 60.0), (prob, truth_b, 60.0)])["min_et_enhancement"] is None
    assert post.fit([(prob, truth_b, 60.0, z_b)])["min_et_enhancement"] is None
    with pytest.raises(ValueError, match="enhancement None"):
        post.fit([(prob, truth_b, 60.0, z_b)], min_et_enhancements=(0.0,))


def test_default_postprocessing_is_monai_threshold_at_one_half(mods):
    from monai.data import MetaTensor
    from monai.transforms import AsDiscreted

    post = mods["postprocessing"]
    prob = torch.rand(3, 6, 7, 8)
    prob[0, 0, 0, :3] = torch.tensor([0.5, 0.4999, 0.5001])
    pred = MetaTensor(prob.clone(), affine=torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0])))
    out = post.RegionPostprocessd("pred")({"pred": pred})["pred"]
    expected = AsDiscreted("pred", threshold=0.5)({"pred": pred.clone()})["pred"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    torch.testing.assert_close(out.as_tensor(), expected.as_tensor().float())
    torch.testing.assert_close(out.affine, pred.affine)


def test_postprocessing_fit_picks_the_smallest_volume_that_removes_the_blob(mods):
    post = mods["postprocessing"]
    prob, truth = _blobs()
    # voxel 60 mm³: blob 120 mm³, tumour 1620 mm³. WT Dice: 54/56 with volumes 0 and 100 (blob kept), 1 with
    # 250-1000 (blob removed), 0 with 2000 and 4000 (tumour removed too); the smallest best volume is 250.
    result = post.fit([(prob, truth, 60.0)])
    assert result["min_component_mm3"] == [0.0, 250.0, 0.0]
    assert result["min_region_mm3"] == [0.0, 0.0, 0.0]  # the component removal already scores 1: nothing more
    assert result["region_thresholds"] == [0.5, 0.5, 0.5]  # every threshold ties: the one nearest 0.5
    assert result["validation_dice_before"] == pytest.approx([1.0, 54 / 56, 1.0])  # TC, ET: both empty
    assert result["validation_dice_after"] == pytest.approx([1.0, 1.0, 1.0])
    assert result["num_cases"] == 1
    with pytest.raises(ValueError, match="at least one"):
        post.fit([])


def test_training_records_the_fitted_postprocessing_and_inference_applies_it(trained, tmp_path):
    from bundle_harness import inference_parser

    settings = json.loads((trained / "models" / "model.json").read_text())
    assert len(settings["region_thresholds"]) == 3 and len(settings["min_component_mm3"]) == 3
    assert len(settings["min_region_mm3"]) == 3
    fit = settings["postprocessing_fit"]
    assert fit["num_cases"] >= 1
    assert all(a >= b - 1e-9 for a, b in zip(fit["validation_dice_after"], fit["validation_dice_before"]))
    # inference (and evaluate, the same ids) reads them from model.json; the command line wins
    parser = inference_parser(AREA, tmp_path, tmp_path / "out", trained / "models" / "model.pt")
    step = next(t for t in parser.get_parsed_content("postprocessing").transforms
                if type(t).__name__ == "RegionPostprocessd")
    assert step.thresholds == settings["region_thresholds"]
    assert step.min_component_mm3 == settings["min_component_mm3"]
    assert step.min_region_mm3 == settings["min_region_mm3"]
    assert "min_et_enhancement" in settings  # None when the validation split gives the rule no reason
    rule = next(t for t in parser.get_parsed_content("postprocessing").transforms
                if type(t).__name__ == "RemoveNonEnhancingETd")
    assert rule.min_enhancement == settings["min_et_enhancement"]
    assert rule.threshold == settings["region_thresholds"][2]
    parser = inference_parser(AREA, tmp_path, tmp_path / "out", trained / "models" / "model.pt",
                              min_et_enhancement="off")  # as `--min_et_enhancement off` gives it
    assert next(t for t in parser.get_parsed_content("postprocessing").transforms
                if type(t).__name__ == "RemoveNonEnhancingETd").min_enhancement is None
    parser = inference_parser(AREA, tmp_path, tmp_path / "out", trained / "models" / "model.pt",
                              min_component_mm3=[0.0, 0.0, 0.0])
    assert parser.get_parsed_content("postprocessing").transforms[-2].min_component_mm3 == [0.0, 0.0, 0.0]


def test_training_writes_split_and_checkpoint(trained, tiny_data):
    split = json.loads((trained / "splits.json").read_text())
    assert sorted(split["train"] + split["validation"]) == sorted(p.name for p in tiny_data.iterdir())
    assert not set(split["train"]) & set(split["validation"])
    state = torch.load(trained / "models" / "model.pt", map_location="cpu")
    assert any(k.endswith("conv_final.2.conv.weight") for k in state)


def test_evaluate_warns_that_it_scores_the_cases_it_trained_on(tiny_pipeline):
    """The shared tiny run evaluates the very folder it trained on: the log says how many cases were trained on."""
    run = tiny_pipeline(AREA)
    split = json.loads((run["out"] / "splits.json").read_text())
    n_train, n_all = len(split["train"]), len(split["train"]) + len(split["validation"])
    log = run["logs"]["evaluate"]
    assert f"{n_train} of the {n_all} evaluated cases were trained on" in log.stdout + log.stderr


def test_evaluate_and_inference_geometry(trained, tiny_data, tmp_path):
    out = trained  # the shared run evaluated on tiny_data with the evaluate command
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["key_metric"] == "mean_dice" and metrics["num_cases"] == TINY["num_cases"]
    for name in ("dice_tc", "dice_wt", "dice_et", "hd95_tc", "hd95_wt", "hd95_et"):
        assert name in metrics and f"{name}_ci95" in metrics
    assert list((out / "overlays").glob("*.png")), "evaluate writes prediction overlays"

    pred = tmp_path / "pred"
    # inference reads only the four sequences: remove the labels from a copy of the input
    inp = tmp_path / "input"
    shutil.copytree(tiny_data, inp)
    for seg in inp.glob("*/*_seg.nii.gz"):
        seg.unlink()
    run_monai_bundle(["run", "--config_file", config_list(AREA, "inference", "tiny"), "--input_dir", inp,
                      "--output_dir", pred, "--ckpt_path", trained / "models" / "model.pt"])
    for case in sorted(p.name for p in inp.iterdir()):
        written = nib.load(pred / "predictions" / f"{case}_pred.nii.gz")
        reference = nib.load(inp / case / f"{case}_t1.nii.gz")
        assert written.shape == reference.shape
        np.testing.assert_allclose(written.affine, reference.affine, atol=1e-5)
        assert written.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1, 2, 4}


def test_inference_pipeline_turns_non_enhancing_et_into_necrosis_on_the_image_grid(tiny_data, tmp_path):
    """The rule inside ``inference.json``: with a minimum enhancement no T1ce reaches, no predicted ET is left and
    nothing outside the rule-off output's ET changes. An ET voxel becomes necrosis where TC was predicted (the
    untrained network also predicts ET outside TC: those become oedema or background)."""
    from bundle_harness import inference_evaluator, seeded_checkpoint

    inp = tmp_path / "input"
    shutil.copytree(tiny_data, inp)
    for seg in inp.glob("*/*_seg.nii.gz"):
        seg.unlink()
    ckpt = seeded_checkpoint(AREA, tmp_path / "model.pt")  # untrained, seeded: ET above 0.5 in places
    labels = {}
    for rule in ("off", 1e9):
        out = tmp_path / f"pred_{rule}"
        inference_evaluator(AREA, inp, out, ckpt, min_et_enhancement=rule).run()
        labels[rule] = {p.name: np.asarray(nib.load(p).dataobj) for p in sorted((out / "predictions").glob("*.gz"))}
    assert labels["off"] and labels["off"].keys() == labels[1e9].keys()
    assert any((lab == 4).any() for lab in labels["off"].values())  # the precondition: ET to remove
    for name, off in labels["off"].items():
        on = labels[1e9][name]
        assert not (on == 4).any()
        np.testing.assert_array_equal(on[off != 4], off[off != 4])
    assert any(((off == 4) & (labels[1e9][name] == 1)).any() for name, off in labels["off"].items())  # necrosis


# ---------------------------------------------------------------------------------------------------------------------
# bad input: each problem names the case and file, before any compute; nothing half-written
# ---------------------------------------------------------------------------------------------------------------------
def _copy_case(src: Path, dst_root: Path) -> Path:
    dst = dst_root / src.name
    shutil.copytree(src, dst)
    return dst


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _missing_sequence(case: Path) -> str:
    (case / f"{case.name}_t1ce.nii.gz").unlink()
    return f"{case.name}_t1ce.nii.gz"


def _shape_mismatch(case: Path) -> str:
    ref = nib.load(case / f"{case.name}_t1.nii.gz")
    _save(case / f"{case.name}_t2.nii.gz", np.zeros(tuple(s + 1 for s in ref.shape), np.float32), ref.affine)
    return f"{case.name}_t2.nii.gz"


def _affine_mismatch(case: Path) -> str:
    ref = nib.load(case / f"{case.name}_t1.nii.gz")
    _save(case / f"{case.name}_flair.nii.gz", np.asarray(ref.dataobj, np.float32), ref.affine @ np.diag([2, 1, 1, 1]))
    return f"{case.name}_flair.nii.gz"


def _bad_label_value(case: Path) -> str:
    ref = nib.load(case / f"{case.name}_seg.nii.gz")
    data = np.asarray(ref.dataobj).copy()
    data[0, 0, 0] = 3
    _save(case / f"{case.name}_seg.nii.gz", data, ref.affine)
    return f"{case.name}_seg.nii.gz"


def _nan_voxels(case: Path) -> str:
    ref = nib.load(case / f"{case.name}_t1.nii.gz")
    data = np.asarray(ref.dataobj, np.float32).copy()
    data[1, 1, 1] = np.nan
    _save(case / f"{case.name}_t1.nii.gz", data, ref.affine)
    return f"{case.name}_t1.nii.gz"


def _unreadable(case: Path) -> str:
    (case / f"{case.name}_flair.nii.gz").write_bytes(b"this is not a NIfTI file at all")
    return f"{case.name}_flair.nii.gz"


def _truncated(case: Path) -> str:
    path = case / f"{case.name}_t2.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    return f"{case.name}_t2.nii.gz"


def _empty_file(case: Path) -> str:
    (case / f"{case.name}_t1.nii.gz").write_bytes(b"")
    return f"{case.name}_t1.nii.gz"


def _four_d(case: Path) -> str:
    ref = nib.load(case / f"{case.name}_t1ce.nii.gz")
    _save(case / f"{case.name}_t1ce.nii.gz", np.zeros((*ref.shape, 2), np.float32), ref.affine)
    return f"{case.name}_t1ce.nii.gz"


def _missing_label(case: Path) -> str:
    (case / f"{case.name}_seg.nii.gz").unlink()
    return f"{case.name}_seg.nii.gz"


BAD_INPUTS = {
    "missing sequence": (_missing_sequence, "missing"),
    "missing label": (_missing_label, "missing"),
    "shape mismatch": (_shape_mismatch, "shape"),
    "affine mismatch": (_affine_mismatch, "affine"),
    "label outside {0,1,2,4}": (_bad_label_value, "label values {3}"),
    "NaN voxels": (_nan_voxels, "NaN"),
    "unreadable file": (_unreadable, "not a readable NIfTI"),
    "truncated file": (_truncated, "not a readable NIfTI"),
    "empty file": (_empty_file, "empty"),
    "4D sequence": (_four_d, "3D volume"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_reported_with_case_and_file(name, mods, tiny_data, tmp_path):
    from common.validation import DatasetError

    spoil, expected = BAD_INPUTS[name]
    root = tmp_path / "data"
    good = _copy_case(tiny_data / "BraTS2021_00000", root)
    bad = _copy_case(tiny_data / "BraTS2021_00001", root)
    filename = spoil(bad)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as err:
        mods["data"].training_split(root, output_dir=out, val_fraction=0.5, seed=0)
    message = str(err.value)
    assert filename in message and bad.name in message and expected in message, message
    assert good.name + "_" not in message, "only the bad case is reported"
    assert not out.exists(), "nothing is written when the data is bad"


def test_every_problem_is_reported_at_once(mods, tiny_data, tmp_path):
    from common.validation import DatasetError

    root = tmp_path / "data"
    names = [_missing_sequence(_copy_case(tiny_data / "BraTS2021_00000", root)),
             _bad_label_value(_copy_case(tiny_data / "BraTS2021_00001", root))]
    with pytest.raises(DatasetError) as err:
        mods["data"].load_cases(root)
    assert all(n in str(err.value) for n in names) and "2 problem(s)" in str(err.value)


def test_empty_or_missing_dataset_dir(mods, tmp_path):
    from common.validation import DatasetError

    with pytest.raises(DatasetError, match="no cases found"):
        mods["data"].load_cases(tmp_path)
    with pytest.raises(DatasetError, match=r"does not exist \(set --dataset_dir\)"):
        mods["data"].load_cases(tmp_path / "nowhere")


def test_training_on_bad_data_fails_before_training(tiny_data, tmp_path):
    root = tmp_path / "data"
    for i in range(2):
        _copy_case(tiny_data / f"BraTS2021_{i:05d}", root)
    filename = _nan_voxels(root / "BraTS2021_00001")
    proc = run_monai_bundle(["run", "--config_file", config_list(AREA, "train", "tiny"), "--dataset_dir", root,
                             "--output_dir", tmp_path / "out"], expect_ok=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert filename in text and "NaN" in text
    assert "Epoch: 1/" not in text, "no training iteration may run on bad data"
    assert not (tmp_path / "out" / "models").exists()


def test_inference_skips_a_bad_case_and_fails_naming_it(mods, trained, tiny_data, tmp_path, caplog):
    import logging

    from monai.bundle import ConfigParser

    from common.validation import BatchFailure

    inp = tmp_path / "input"
    _copy_case(tiny_data / "BraTS2021_00000", inp)
    filename = _missing_sequence(_copy_case(tiny_data / "BraTS2021_00001", inp))
    (inp / "BraTS2021_00002_t1.nii.gz").write_bytes(b"a file outside any case folder")  # issue 13 kind 6: named
    (inp / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: ignored silently
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / AREA / "configs" / n) for n in ("inference.json", "tiny.json")])
    parser.update({"input_dir": str(inp), "output_dir": str(tmp_path / "pred"),
                   "ckpt_path": str(trained / "models" / "model.pt")})
    parser.parse()
    with pytest.raises(BatchFailure) as err, caplog.at_level(logging.WARNING):
        parser.get_parsed_content("evaluator").run()
    assert filename in str(err.value) and "1 input(s) failed (1 processed)" in str(err.value)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{inp / 'BraTS2021_00002_t1.nii.gz'}: not predicted: a file, not a case folder" in "\n".join(warned)
    assert not any(".DS_Store" in m for m in warned)
    written = sorted(p.name for p in (tmp_path / "pred" / "predictions").iterdir())
    assert written == ["BraTS2021_00000_pred.nii.gz"], "good case written, bad one not, no temporary file left"


# ---------------------------------------------------------------------------------------------------------------------
# geometry (issue 13 kind 1): a header whose qform and sform disagree is read in one geometry, the sform's
# ---------------------------------------------------------------------------------------------------------------------
def _quirky_copy(src: Path, dst_root: Path) -> Path:
    """The same case with the header some conversion tools write: qform identity (code 1), sform the real affine
    (code 1); pixdim then says 1 mm. MONAI's stock reader took the qform, nibabel (and the bundle's checks) the
    sform."""
    dst = _copy_case(src, dst_root)
    for path in dst.glob("*.nii.gz"):
        image = nib.load(path)
        quirky = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header.copy())
        quirky.set_qform(np.eye(4), code=1)
        quirky.set_sform(image.affine, code=1)
        nib.save(quirky, path)
        assert nib.load(path).header.get_zooms() == (1.0, 1.0, 1.0)
    return dst


def test_quirky_header_gives_the_same_input_prediction_and_metrics(mods, tiny_data, tmp_path, caplog):
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    case = "BraTS2021_00000"
    clean = _copy_case(tiny_data / case, tmp_path / "clean")
    quirky = _quirky_copy(tiny_data / case, tmp_path / "quirky")
    # network input: same voxels, same grid
    pre = Compose(mods["transforms"].preprocessing(TINY["pixdim"], with_label=True))
    with caplog.at_level("WARNING", logger="common.geometry"):
        a, b = (pre(mods["data"].case_item(c)) for c in (clean, quirky))
    warned = " ".join(r.getMessage() for r in caplog.records if r.name == "common.geometry")
    assert str(quirky / f"{case}_t1.nii.gz") in warned and "1 x 1 x 1 mm" in warned and "7 x 7 x 7 mm" in warned
    for key in ("image", "label"):
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
        np.testing.assert_allclose(a[key].affine.numpy(), b[key].affine.numpy(), atol=1e-5)
    # inference with fixed (seeded, untrained) weights, whose mask covers much of the volume: the same mask, written in
    # the sform's geometry with one transform in the header
    configs = [str(REPO / "bundles" / AREA / "configs" / n) for n in ("inference.json", "tiny.json")]
    parser = ConfigParser()
    parser.read_config(configs)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "fixed.pt")
    masks = {}
    for name, root in (("clean", clean.parent), ("quirky", quirky.parent)):
        parser = ConfigParser()
        parser.read_config(configs)
        parser.update({"input_dir": str(root), "output_dir": str(tmp_path / f"pred_{name}"),
                       "ckpt_path": str(tmp_path / "fixed.pt")})
        parser.parse()
        parser.get_parsed_content("evaluator").run()
        masks[name] = nib.load(tmp_path / f"pred_{name}" / "predictions" / f"{case}_pred.nii.gz")
    labels = np.asarray(masks["clean"].dataobj)
    assert 0.01 < float((labels > 0).mean()) < 0.99, "a mask that geometry could change"
    np.testing.assert_array_equal(labels, np.asarray(masks["quirky"].dataobj))
    reference = nib.load(clean / f"{case}_t1.nii.gz").affine
    for mask in masks.values():
        np.testing.assert_allclose(mask.get_sform(), reference, atol=1e-5)
        np.testing.assert_allclose(mask.get_qform(), reference, atol=1e-4)
    # evaluate's per-case metrics: HD95 in the sform's mm. The prediction is the truth moved one voxel along the
    # first axis: each moved surface point lies 1 voxel = 7 mm from the truth's surface, so HD95 = 7 mm (1 mm with
    # the stale pixdim)
    truth = mods["metrics"].labels_to_regions(np.asarray(nib.load(clean / f"{case}_seg.nii.gz").dataobj))
    pred = np.roll(truth, 1, axis=1)
    rows = {}
    for name, folder in (("clean", clean), ("quirky", quirky)):
        engine = type("Engine", (), {})()
        engine.state = type("State", (), {"batch": [{"case": case, "label_path": str(folder / f"{case}_seg.nii.gz")}],
                                          "output": [{"pred": torch.as_tensor(pred.astype(np.float32))}]})()
        (rows[name],) = mods["metrics"].CaseRows()(engine)
    assert rows["clean"] == rows["quirky"]
    assert rows["quirky"]["hd95_wt"] == pytest.approx(7.0)


# ---------------------------------------------------------------------------------------------------------------------
# transfer from the Model Zoo's brats_mri_segmentation (issue 16)
# ---------------------------------------------------------------------------------------------------------------------
def test_model_zoo_brats_checkpoint_loads_completely_with_init_filters_16(tmp_path):
    """A state dict in the layout of the Zoo's ``brats_mri_segmentation`` (built here from MONAI's SegResNet; nothing
    is downloaded) loads into train.json's network with every tensor matched under ``--init_filters 16``, directly
    and after ``scripts/zoo.py`` has put its input channels in this bundle's order; the default width refuses it."""
    from monai.bundle import ConfigParser
    from monai.networks.nets import SegResNet

    from bundle_harness import import_bundle_module
    from common.checkpoint import CheckpointError

    zoo_module = import_bundle_module(AREA, "zoo")
    import_bundle_module(AREA, "networks")
    torch.manual_seed(0)
    zoo = SegResNet(spatial_dims=3, init_filters=16, in_channels=4, out_channels=3, blocks_down=(1, 2, 2, 4),
                    blocks_up=(1, 1, 1), dropout_prob=0.2)
    zoo_path, converted = tmp_path / "zoo" / "model.pt", tmp_path / "brats_zoo_t1_first.pt"
    zoo_path.parent.mkdir()
    torch.save(zoo.state_dict(), zoo_path)
    zoo_module.convert(zoo_path, converted)

    def network(ckpt, **overrides):
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / AREA / "configs" / "train.json"))
        parser.update({"pretrained_ckpt": str(ckpt), **overrides})
        return parser.get_parsed_content("network_init")

    expected = zoo.state_dict()
    for ckpt in (zoo_path, converted):
        net = network(ckpt, init_filters=16)
        report = net.transfer_report
        assert report.skipped == {} and sorted(report.loaded) == sorted(expected), ckpt
    state = net.state_dict()  # the converted one: T1 (bundle channel 0) <- Zoo channel 1 (T1), T1ce <- Zoo T1ce (0)
    first = "convInit.conv.weight"
    assert (torch.equal(state[first][:, 0], expected[first][:, 1])
            and torch.equal(state[first][:, 1], expected[first][:, 0]))
    assert torch.equal(state[first][:, 2:], expected[first][:, 2:])
    assert all(torch.equal(v, expected[k]) for k, v in state.items() if k != first)
    # the default width (8): only the output bias ([3]) fits, the rest are shape mismatches (logged with a warning)
    narrow = network(zoo_path).transfer_report
    assert narrow.loaded == ["conv_final.2.conv.bias"] and len(narrow.skipped) == len(expected) - 1
    with pytest.raises(CheckpointError, match=str(tmp_path / "none.pt")):
        zoo_module.convert(tmp_path / "none.pt", tmp_path / "out.pt")


def test_inference_network_is_channels_last_3d_with_the_contiguous_outputs(tmp_path):
    """inference.json runs the network in channels-last-3d memory format (0.83 x the time at the demo grid, model
    card); its logits under the config's sliding-window inferer equal the contiguous network's within 1e-4."""
    from bundle_harness import inference_network_and_contiguous_copy

    x = torch.randn(1, 4, 40, 45, 38, generator=torch.Generator().manual_seed(1))
    network, contiguous, ours, reference = inference_network_and_contiguous_copy(AREA, x, tmp_path)
    weight = network.convInit.conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()
    assert contiguous.convInit.conv.weight.is_contiguous()
    assert torch.allclose(ours, reference, rtol=0.0, atol=1e-4), float((ours - reference).abs().max())


def test_benchmark_reads_engine_times_from_the_log(tmp_path):
    """The speed part times the case by the inference workflow's own log line (the per-case log line has no time
    since inference.json became an evaluator); 00:01:02.500 is 62.5 s, the last line wins, another engine's line
    is not taken."""
    from bundle_harness import import_bundle_module

    bench = import_bundle_module(AREA, "benchmark")
    log = tmp_path / "infer.log"
    log.write_text(
        "2026-12-01 06:31:28,737 - ignite.engine.engine.InferenceEvaluator - INFO - Epoch[1] Complete. Time taken: "
        "00:00:04.227\n"
        "2026-12-01 06:31:28,737 - ignite.engine.engine.InferenceEvaluator - INFO - Engine run finished. Time taken: "
        "00:00:09.000\n"
        "2026-12-01 06:31:29,000 - ignite.engine.engine.InferenceEvaluator - INFO - Engine run finished. Time taken: "
        "00:01:02.500\n")
    assert bench.engine_seconds(log, "InferenceEvaluator") == pytest.approx(62.5)
    assert bench.engine_seconds(log, "SupervisedTrainer") is None
    assert bench.trainer_seconds(log) is None


def test_benchmark_seed_grid_summarises_every_run(tmp_path):
    """The seed grid reuses finished runs (no command here) and summarises them: hand-computed mean, sample SD,
    minimum; the WT HD95 median is over the cases of each run."""
    from bundle_harness import import_bundle_module

    bench = import_bundle_module(AREA, "benchmark")
    header = "case,mean_dice,hd95_wt\n"
    dice = {(0, 1): 0.80, (0, 2): 0.84, (1, 1): 0.86, (1, 2): 0.90}
    for (seed, heldout), value in dice.items():
        run = tmp_path / "demo" / f"seed{seed}"
        run.mkdir(parents=True, exist_ok=True)
        (run / "train_result.json").write_text(json.dumps({"trainer_s": 100.0 + seed}))
        for suffix, shift in (("", 0.0), ("_raw", -0.02)):
            out = run / f"heldout{heldout}{suffix}"
            out.mkdir()
            (out / "metrics.json").write_text(json.dumps(
                {"mean_dice": value + shift, "dice_tc": 0.9, "dice_wt": 0.9, "dice_et": value + shift - 0.1}))
            (out / "metrics_per_case.csv").write_text(header + f"a,{value},4.0\nb,{value},10.0\nc,{value},nan\n")
    grid = bench.seed_grid(tmp_path, "demo", tmp_path / "train", {1: tmp_path / "h1", 2: tmp_path / "h2"}, [0, 1],
                           [], ablate=True)
    summary = grid["summary"]
    assert [(r["train_seed"], r["heldout_seed"]) for r in grid["runs"]] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert summary["mean_dice"]["mean"] == pytest.approx(0.85)
    assert summary["mean_dice"]["sd"] == pytest.approx(np.std([0.80, 0.84, 0.86, 0.90], ddof=1))
    assert summary["mean_dice"]["min"] == pytest.approx(0.80)
    assert summary["mean_dice_raw"]["mean"] == pytest.approx(0.83)
    assert summary["dice_et"]["min"] == pytest.approx(0.70)
    assert summary["hd95_wt_median_mm"]["max"] == pytest.approx(7.0)  # median of 4 and 10 (the nan row left out)
    assert grid["runs"][0]["num_cases"] == 3
    assert summary["trainer_s_mean"] == pytest.approx(100.5)
