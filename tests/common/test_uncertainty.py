"""common.uncertainty: entropy, TTA, case score, error AUC, Spearman and split conformal intervals, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.transforms import Compose

from common.checkpoint import CheckpointError
from common.uncertainty import (
    PredictiveEntropyd,
    TTAInferer,
    case_score,
    conformal_interval,
    conformal_quantile,
    flip_combinations,
    min_calibration_cases,
    normalised_scores,
    predictive_entropy,
    require_conformal,
    uncertainty_case_spearman,
    uncertainty_error_auc,
    with_entropy,
    write_entropy_png,
)


def test_softmax_entropy_by_hand():
    # voxel 0: uniform over 4 classes -> ln 4 = 1.386294; voxel 1: certain -> 0; voxel 2: (0.5, 0.5, 0, 0) -> ln 2
    p = torch.tensor([[0.25, 1.0, 0.5], [0.25, 0.0, 0.5], [0.25, 0.0, 0.0], [0.25, 0.0, 0.0]])
    np.testing.assert_allclose(predictive_entropy(p, "softmax").numpy(), [1.3862944, 0.0, 0.6931472], rtol=1e-6)


def test_sigmoid_entropy_is_the_sum_of_binary_entropies():
    # three regions at one voxel: p = 0.5 (ln 2 = 0.693147), 0.9 (0.325083), 1.0 (0): sum 1.018230
    p = torch.tensor([[0.5], [0.9], [1.0]])
    np.testing.assert_allclose(predictive_entropy(p, "sigmoid").numpy(), [1.0182303], rtol=1e-6)


def test_entropy_refuses_non_probabilities():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predictive_entropy(torch.tensor([[1.5]]), "sigmoid")
    with pytest.raises(ValueError, match="activation"):
        predictive_entropy(torch.tensor([[0.5]]), "relu")


def test_flip_combinations_cover_every_flip_once():
    assert flip_combinations([0, 1, 2], 8) == [(), (0,), (1,), (0, 1), (2,), (0, 2), (1, 2), (0, 1, 2)]
    assert flip_combinations([], 3) == [(), (), ()]


def _conv_net():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    return net.eval()


def test_tta_with_identity_transforms_equals_the_single_pass():
    net, x = _conv_net(), torch.rand(2, 1, 12, 10)
    tta = TTAInferer(SimpleInferer(), tta_samples=5, activation="softmax", flip_axes=(), intensity=())
    with torch.no_grad():
        single = torch.softmax(net(x), 1)
        mean = torch.softmax(tta(x, net), 1)
    torch.testing.assert_close(mean, single, atol=1e-6, rtol=1e-5)
    counts = tta.sample_counts
    assert counts.shape == (5, 2, 3) and float(counts.std(0).max()) == 0.0  # zero spread between samples
    torch.testing.assert_close(predictive_entropy(mean[0], "softmax"), predictive_entropy(single[0], "softmax"),
                               atol=1e-5, rtol=1e-5)


def test_tta_flips_are_inverted_and_deterministic():
    # a network that only sees each voxel (1x1 conv) gives the same output under a flip: TTA == single pass
    torch.manual_seed(1)
    net = torch.nn.Conv2d(1, 1, 1).eval()
    x = torch.rand(1, 1, 8, 6)
    tta = TTAInferer(SlidingWindowInferer(roi_size=(4, 4), sw_batch_size=2), tta_samples=4, activation="sigmoid",
                     flip_axes=(0, 1))
    with torch.no_grad():
        torch.testing.assert_close(torch.sigmoid(tta(x, net)), torch.sigmoid(net(x)), atol=1e-5, rtol=1e-5)
    # with a position-dependent network and intensity noise, the same seed gives the same answer twice
    from monai.transforms import RandGaussianNoise

    net2 = _conv_net()
    noisy = TTAInferer(SimpleInferer(), 4, "softmax", (0, 1), [RandGaussianNoise(prob=1.0, std=0.1)], seed=3)
    with torch.no_grad():
        a, b = noisy(x, net2), noisy(x, net2)
    torch.testing.assert_close(a, b)
    assert float(noisy.sample_counts.std(0).max()) >= 0.0


def test_tta_disabled_is_the_wrapped_inferer():
    net, x = _conv_net(), torch.rand(1, 1, 6, 6)
    with torch.no_grad():
        out = TTAInferer(SimpleInferer(), 8, "softmax", (0, 1), enabled=False)(x, net)
        torch.testing.assert_close(out, net(x))


def test_tta_refuses_bad_settings():
    with pytest.raises(ValueError, match="tta_samples"):
        TTAInferer(SimpleInferer(), 0)
    with pytest.raises(ValueError, match="flip_axes"):
        TTAInferer(SimpleInferer(), 2, "softmax", (2,))(torch.rand(1, 1, 4, 4), _conv_net())


def test_entropy_postprocessing_step_and_insertion():
    from monai.transforms import Activationsd, AsDiscreted

    post = Compose([Activationsd("pred", softmax=True), AsDiscreted("pred", argmax=True)])
    step = PredictiveEntropyd("pred", "softmax")
    merged = with_entropy(post, step)
    assert [type(t).__name__ for t in merged.transforms] == ["Activationsd", "PredictiveEntropyd", "AsDiscreted"]
    out = merged({"pred": torch.zeros(2, 3, 3)})  # equal logits: p = (0.5, 0.5), entropy ln 2 everywhere
    assert out["uncertainty"].shape == (1, 3, 3)
    np.testing.assert_allclose(out["uncertainty"].numpy(), math.log(2), rtol=1e-6)
    assert PredictiveEntropyd("pred", "softmax", enabled=False)({"pred": torch.zeros(2, 1)}).keys() == {"pred"}


def test_case_score_over_foreground_and_band():
    h = np.zeros((1, 7))
    h[0] = [9.0, 1.0, 2.0, 3.0, 2.0, 1.0, 9.0]
    fg = np.zeros((1, 7), bool)
    fg[0, 3] = True
    assert case_score(h, fg, band=0) == 3.0
    assert case_score(h, fg, band=1) == pytest.approx((2 + 3 + 2) / 3)
    assert case_score(h, fg, band=2) == pytest.approx((1 + 2 + 3 + 2 + 1) / 5)
    assert case_score(h, np.zeros_like(fg), band=2) is None
    # in-plane only: a band along axis 1 does not spread to the next slice (axis 0)
    h3, fg3 = np.ones((3, 3)), np.zeros((3, 3), bool)
    h3[1] = 5.0
    fg3[1, 1] = True
    assert case_score(h3, fg3, band=1, axes=(1,)) == 5.0
    assert case_score(h3, fg3, band=1) == pytest.approx((5 * 3 + 1 * 2) / 5)


def test_error_auc_on_a_hand_made_array():
    # box = columns 1..3 of row 0 (foreground); outside it a wrong voxel with uncertainty 0 is ignored
    u = np.array([[0.0, 0.9, 0.2, 0.4, 0.0]])
    wrong = np.array([[1, 1, 0, 1, 0]])
    fg = np.array([[0, 1, 1, 1, 0]])
    # inside: wrong {0.9, 0.4}, right {0.2}: both pairs ranked right -> AUC 1.0
    assert uncertainty_error_auc(u, wrong, fg) == 1.0
    wrong2 = np.array([[0, 1, 1, 0, 0]])  # wrong {0.9, 0.2}, right {0.4}: 1 of 2 pairs right -> 0.5
    assert uncertainty_error_auc(u, wrong2, fg) == 0.5
    assert uncertainty_error_auc(u, np.zeros_like(wrong), fg) is None  # no wrong voxel: undefined
    assert uncertainty_error_auc(u, wrong, np.zeros_like(fg)) is None


def test_case_spearman_by_hand():
    rows = [{"uncertainty_score": s, "dice": d} for s, d in [(0.1, 0.9), (0.3, 0.7), (0.2, 0.8), (0.4, 0.95)]]
    # ranks of score 1,3,2,4; of 1 - dice (0.1, 0.3, 0.2, 0.05): 2,4,3,1 -> d^2 = 1+1+1+9 = 12; rho = 1 - 6*12/60
    assert uncertainty_case_spearman(rows, "dice") == pytest.approx(1 - 6 * 12 / (4 * 15))
    assert uncertainty_case_spearman(rows[:2], "dice") is None


def test_conformal_quantile_finite_sample_rule():
    scores = np.arange(1, 20, dtype=float)  # n = 19, alpha = 0.05: ceil(20 * 0.95) = 19 -> the largest
    assert conformal_quantile(scores, 0.05) == 19.0
    assert conformal_quantile(scores[:18], 0.05) == math.inf  # ceil(19 * 0.95) = 19 > 18
    assert conformal_quantile([3.0, 1.0, 2.0, 4.0], 0.5) == 3.0  # ceil(5 * 0.5) = 3rd smallest
    assert min_calibration_cases(0.05) == 19
    with pytest.raises(ValueError):
        conformal_quantile([], 0.05)


def test_conformal_coverage_on_a_synthetic_regression():
    """Heteroscedastic truth y = x + sigma(x) * N(0, 1); the predictor knows sigma only up to a factor of 2 (the
    spread estimate). Over 1000 draws of a calibration set of 50 cases, the average coverage of fresh cases must
    reach 95 % (the marginal guarantee; its expected value here is ceil(51 * 0.95) / 51 = 0.961)."""
    rng = np.random.default_rng(0)

    def draw(n):
        x = rng.uniform(0, 10, n)
        sigma = 0.5 + 0.3 * x
        y = x + sigma * rng.standard_normal(n)
        return x, y, sigma * rng.uniform(0.5, 2.0, n)

    xt, yt, st = draw(4000)
    coverage, coverage_at_80 = [], []
    for _ in range(1000):
        xc, yc, sc = draw(50)
        scores = normalised_scores(xc, yc, sc, floor=0.1)
        for alpha, out in ((0.05, coverage), (0.2, coverage_at_80)):
            q = conformal_quantile(scores, alpha=alpha)
            lo, hi = conformal_interval(0.0, 1.0, q, 0.1)  # the half-width factor, then per case below
            half = hi * np.maximum(st, 0.1)
            out.append(np.mean(np.abs(yt - xt) <= half))
    assert np.mean(coverage) >= 0.95, np.mean(coverage)
    assert 0.79 <= np.mean(coverage_at_80) < 0.85  # a smaller 1 - alpha gives smaller intervals: the test can fail


def test_require_conformal_refuses_clearly(tmp_path):
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    assert require_conformal(ckpt, False, 8) is None
    with pytest.raises(CheckpointError, match=r"model\.json.*no conformal calibration"):
        require_conformal(ckpt, True, 8)
    (tmp_path / "models" / "model.json").write_text(
        '{"conformal": {"alpha": 0.05, "n": 3, "n_required": 19, "tta_samples": 8, "q": {"lv_ef_pct": null}}}')
    with pytest.raises(CheckpointError, match=r"model\.json.*3 validation patients.*at least 19"):
        require_conformal(ckpt, True, 8)
    (tmp_path / "models" / "model.json").write_text(
        '{"conformal": {"alpha": 0.05, "n": 20, "tta_samples": 8, "q": {"lv_ef_pct": 2.5}}}')
    assert require_conformal(ckpt, True, 8)["q"]["lv_ef_pct"] == 2.5
    with pytest.raises(CheckpointError, match="tta_samples 8.*asks for 4"):
        require_conformal(ckpt, True, 4)


def test_entropy_png_scale_in_text_metadata(tmp_path):
    from PIL import Image

    h = np.array([[0.0, math.log(2) / 2, math.log(2)]])
    per_level = write_entropy_png(h, tmp_path / "u.png", channels=1, activation="sigmoid")
    image = Image.open(tmp_path / "u.png")
    assert np.asarray(image).tolist() == [[0, 128, 255]]
    assert image.text["uncertainty_unit"] == "nats"
    assert float(image.text["nats_per_level"]) == pytest.approx(math.log(2) / 255) == pytest.approx(per_level)


def test_uncertainty_case_rows_adds_columns_and_summary(tmp_path):
    from types import SimpleNamespace

    from common.uncertainty import UncertaintyCaseRows

    def arrays(batch, output):
        return {"case": batch["case"], "uncertainty": output["u"], "wrong": output["wrong"],
                "foreground": np.ones_like(output["wrong"]), "predicted": output["pred"]}

    def bundle_rows(engine):
        return [{"case": b["case"], "dice": b["dice"]} for b in engine.state.batch]

    # case a: wrong {0.9}, right {0.1, 0.2} -> AUC 1; case score over pred {0.9} + band 1 {0.1 left, none right}
    a = {"u": np.array([[0.1, 0.9, 0.2]]), "wrong": np.array([[0, 1, 0]]), "pred": np.array([[0, 1, 0]])}
    b = {"u": np.array([[0.5, 0.1, 0.3]]), "wrong": np.array([[0, 1, 0]]), "pred": np.array([[0, 0, 1]])}
    c = {"u": np.array([[0.2, 0.2, 0.8]]), "wrong": np.array([[1, 0, 0]]), "pred": np.array([[1, 0, 0]])}
    batches = [{"case": "a", "dice": 0.9}, {"case": "b", "dice": 0.5}, {"case": "c", "dice": 0.7}]
    wrapper = UncertaintyCaseRows(bundle_rows, arrays, "dice", enabled=True, band=1, n_resamples=50,
                                  overlay_dir=tmp_path)
    engine = SimpleNamespace(state=SimpleNamespace(iteration=1, batch=batches, output=[a, b, c]))
    rows = wrapper(engine)
    # c: wrong {0.2}, right {0.2, 0.8}: a tie (1/2) and a loss (0) -> 0.25
    assert [r["uncertainty_error_auc"] for r in rows] == [1.0, 0.0, 0.25]
    assert rows[0]["uncertainty_score"] == pytest.approx((0.1 + 0.9 + 0.2) / 3)
    assert rows[1]["uncertainty_score"] == pytest.approx((0.1 + 0.3) / 2)
    summary = wrapper.summary()
    assert summary["uncertainty_error_auc"] == pytest.approx(1.25 / 3)
    # scores 0.4, 0.2, 0.2 (ranks 3, 1.5, 1.5) against 1 - dice 0.1, 0.5, 0.3 (ranks 1, 3, 2): rho = -1.5 / sqrt(3)
    assert summary["uncertainty_case_spearman"] == pytest.approx(-0.8660254, abs=1e-6)
    assert "uncertainty_case_spearman_ci95" in summary and "key_metric" not in summary
    assert (tmp_path / "a_uncertainty.png").is_file() and not (tmp_path / "b_uncertainty.png").exists()
    off = UncertaintyCaseRows(bundle_rows, arrays, "dice", enabled=False)
    assert off(engine) == bundle_rows(engine) and off.summary() == {}
