"""common.calibration: temperature scaling, threshold rules, ECE/Brier by hand, the end-of-training fitter, the plot."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from scipy.special import expit, softmax

from common import calibration as cal

# ------------------------------------------------------------------------------------------------ temperature


def test_nll_by_hand():
    # one case, logit 0: p = 1/2 whatever T, NLL = ln 2; logit 2 at T = 2 is logit 1: -ln sigmoid(1)
    assert cal.nll([0.0], [1]) == pytest.approx(math.log(2))
    assert cal.nll([2.0], [1], temperature=2.0) == pytest.approx(-math.log(1 / (1 + math.exp(-1))))
    assert cal.nll([[0.0, 0.0, 0.0]], [2]) == pytest.approx(math.log(3))


def test_temperature_scaling_recovers_a_known_temperature_binary():
    # true probabilities sigmoid(z / 2): the fitted T is the maximum-likelihood estimate of 2. On 4000 cases with
    # z ~ N(0, 3^2) its spread is about 0.065 (20 seeds measured: mean 1.983, sd 0.064, range 1.87-2.11), so
    # +-0.2 is about 3 standard deviations: a fit that found another optimum (or T = 1) fails.
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 3.0, 4000)
    y = (rng.random(4000) < expit(z / 2.0)).astype(int)
    t = cal.fit_temperature(z, y)
    assert t == pytest.approx(2.0, abs=0.2)
    assert cal.nll(z, y, t) < cal.nll(z, y, 1.0)
    # (N, 1) logits are the same problem
    assert cal.fit_temperature(z[:, None], y) == pytest.approx(t, rel=1e-6)


def test_temperature_scaling_recovers_a_known_temperature_softmax():
    # overconfident three-class logits: the true probabilities are softmax(z / 0.5), so T = 0.5 (tolerance as above:
    # relative spread of the estimate is of the same order, a few per cent)
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 1.5, (4000, 3))
    p = softmax(z / 0.5, axis=1)
    y = np.array([rng.choice(3, p=row) for row in p])
    assert cal.fit_temperature(z, y) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("logits, labels, message", [
    ([], [], "non-empty"),
    ([1.0, float("nan")], [0, 1], "NaN"),
    ([1.0, 2.0], [0], "labels for 2"),
    ([1.0, 2.0], [0, 0.5], "class indices"),
])
def test_fit_temperature_refuses_bad_input(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        cal.fit_temperature(logits, labels)


def test_positive_probability():
    assert cal.positive_probability([0.0, 2.0], 2.0) == pytest.approx([0.5, expit(1.0)])
    # two logits: softmax of (z / T) = sigmoid((z1 - z0) / T)
    assert cal.positive_probability([[1.0, 3.0]], 2.0) == pytest.approx([expit(1.0)])
    with pytest.raises(ValueError, match="1 or 2 logits"):
        cal.positive_probability([[1.0, 2.0, 3.0]])


# ------------------------------------------------------------------------------------------------ threshold rules
# positives 0.35, 0.7, 0.8, 0.9 (4); negatives 0.1, 0.3, 0.6 (3). At threshold t (positive when p >= t):
#   t     TP FP  sens  spec  Youden J
#   0.9   1  0   .25   1     .25
#   0.8   2  0   .50   1     .50
#   0.7   3  0   .75   1     .75   <- youden
#   0.6   3  1   .75   2/3   .417
#   0.35  4  1   1     2/3   .667  <- sensitivity:0.95 (highest t with sens >= .95); specificity:0.6 (lowest t with
#   0.3   4  2   1     1/3   .333     spec >= .6)
#   0.1   4  3   1     0     0
PROBS = [0.1, 0.3, 0.35, 0.6, 0.7, 0.8, 0.9]
LABELS = [0, 0, 1, 0, 1, 1, 1]


@pytest.mark.parametrize("rule, expected", [
    ("youden", 0.7), ("sensitivity:0.95", 0.35), ("sensitivity:0.5", 0.8), ("Sensitivity:0.75", 0.7),
    ("specificity:0.6", 0.35), ("specificity:1", 0.7), ("fixed", 0.42),
])
def test_threshold_rules_pick_the_hand_computed_threshold(rule, expected):
    assert cal.choose_threshold(PROBS, LABELS, rule, fixed=0.42) == pytest.approx(expected)


@pytest.mark.parametrize("rule", ["youdn", "sensitivity", "sensitivity:1.5", "sensitivity:0", "recall:0.9", ""])
def test_unknown_threshold_rule_is_refused(rule):
    with pytest.raises(ValueError, match="threshold_rule .* is not one of youden"):
        cal.parse_rule(rule)


def test_threshold_needs_both_classes():
    with pytest.raises(ValueError, match="needs both classes"):
        cal.choose_threshold([0.2, 0.8], [1, 1])


# ------------------------------------------------------------------------------------------------ ECE and Brier


def test_ece_and_brier_by_hand_binary():
    # 15 bins of width 1/15: 0.05 -> bin 0 (freq 0), 0.15 x2 -> bin 2 (freq 1/2), 0.95 -> bin 14 (freq 1)
    # ECE = (1 * |0 - .05| + 2 * |.5 - .15| + 1 * |1 - .95|) / 4 = (.05 + .70 + .05) / 4 = 0.2
    # Brier = (.05^2 + .85^2 + .15^2 + .05^2) / 4 = (.0025 + .7225 + .0225 + .0025) / 4 = 0.1875
    probs, labels = [0.05, 0.15, 0.15, 0.95], [0, 1, 0, 1]
    assert cal.expected_calibration_error(probs, labels) == pytest.approx(0.2)
    assert cal.brier_score(probs, labels) == pytest.approx(0.1875)
    # p = 1 falls in the last bin, p = 1/15 opens the second: each alone is calibrated at its own frequency
    assert cal.expected_calibration_error([1.0], [1]) == pytest.approx(0.0)
    assert cal.expected_calibration_error([1 / 15, 0.0], [1, 0]) == pytest.approx((1 - 1 / 15) / 2)
    # with 2 bins: [0, .5): .05, .15, .15 -> conf .35/3, freq 1/3; [.5, 1]: .95, freq 1
    assert cal.expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(
        (3 * abs(1 / 3 - 0.35 / 3) + abs(1 - 0.95)) / 4)
    rows = [{"p": p, "label": y} for p, y in zip(probs, labels)]
    assert cal.row_ece(rows, prob="p") == pytest.approx(0.2) and cal.row_brier(rows, prob="p") == pytest.approx(0.1875)
    assert cal.row_ece([], prob="p") is None and cal.row_brier([], prob="p") is None


def test_binary_brier_is_scikit_learns():
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(0)
    probs, labels = rng.random(50), rng.integers(0, 2, 50)
    assert cal.brier_score(probs, labels) == pytest.approx(brier_score_loss(labels, probs, pos_label=1), abs=1e-12)
    assert cal.brier_score([0.3, 0.1], [1, 1]) == pytest.approx((0.7 ** 2 + 0.9 ** 2) / 2)  # one class present
    assert cal.brier_score([0.3, 0.1], [2, 0]) is None  # a label that is not 0/1 has no binary Brier score
    for bad in ([1.2, 0.1], [-0.1, 0.5]):
        with pytest.raises(ValueError, match=r"probabilities must lie in \[0, 1\]"):
            cal.brier_score(bad, [1, 0])


def test_ece_and_brier_by_hand_multiclass():
    # top-label confidence .7 (right) and .5 (wrong): ECE = (|1 - .7| + |0 - .5|) / 2 = 0.4
    # Brier = ((.3^2 + .2^2 + .1^2) + (.6^2 + .5^2 + .1^2)) / 2 = (.14 + .62) / 2 = 0.38
    probs, labels = [[0.7, 0.2, 0.1], [0.4, 0.5, 0.1]], [0, 0]
    assert cal.expected_calibration_error(probs, labels) == pytest.approx(0.4)
    assert cal.brier_score(probs, labels) == pytest.approx(0.38)


def test_ece_refuses_probabilities_outside_0_1():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cal.expected_calibration_error([1.2], [1])


# ------------------------------------------------------------------------------------------------ the fitter


class _Identity(torch.nn.Module):
    """One logit = the single input value (weight 1, bias 0): the logits are the data."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x):
        return self.linear(x)


def _fitter_setup(tmp_path, rule="youden"):
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 3.0, 2000).astype(np.float32)
    y = (rng.random(2000) < expit(z / 2.0)).astype(np.float32)
    data = [{"image": torch.tensor([v]), "label": torch.tensor([t])} for v, t in zip(z, y)]
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)  # the fitter re-reads it in order
    best = _Identity()
    with torch.no_grad():
        best.linear.weight.fill_(1.0)
        best.linear.bias.fill_(0.0)
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    torch.save(best.state_dict(), ckpt)
    ckpt.with_suffix(".json").write_text(json.dumps({"channels": [4, 8], "threshold": 0.5}))
    live = _Identity()  # the network at the end of training: other weights than the best model
    fitter = cal.CalibrationFitter(ckpt, live, loader, threshold_rule=rule, threshold=0.3)
    return fitter, ckpt, live, z, y


def test_fitter_records_temperature_and_threshold_of_the_best_model(tmp_path):
    fitter, ckpt, live, z, y = _fitter_setup(tmp_path)
    before = {k: v.clone() for k, v in live.state_dict().items()}
    fitter(None)
    settings = json.loads(ckpt.with_suffix(".json").read_text())
    assert settings["channels"] == [4, 8]  # the training settings are kept
    assert settings["threshold_rule"] == "youden"
    assert settings["temperature"] == pytest.approx(cal.fit_temperature(z, y), rel=1e-4)
    assert settings["temperature"] == pytest.approx(2.0, abs=0.3)
    probs = cal.positive_probability(z, settings["temperature"])
    assert settings["threshold"] == pytest.approx(cal.choose_threshold(probs, y, "youden"), abs=1e-6)
    assert all(torch.equal(v, live.state_dict()[k]) for k, v in before.items())  # the live network is untouched


def test_fitter_fixed_rule_and_other_ranks(tmp_path, monkeypatch):
    fitter, ckpt, _, _, _ = _fitter_setup(tmp_path, rule="fixed")
    import common.checkpoint

    monkeypatch.setattr(common.checkpoint, "is_rank0", lambda: False)  # the rank check of BestModelFitter
    fitter(None)
    assert json.loads(ckpt.with_suffix(".json").read_text()) == {"channels": [4, 8], "threshold": 0.5}
    monkeypatch.setattr(common.checkpoint, "is_rank0", lambda: True)
    fitter(None)
    settings = json.loads(ckpt.with_suffix(".json").read_text())
    assert settings["threshold"] == 0.3 and settings["threshold_rule"] == "fixed"


def test_fitter_refuses_an_unknown_rule_before_training(tmp_path):
    with pytest.raises(ValueError, match="threshold_rule 'median'"):
        cal.CalibrationFitter(tmp_path / "model.pt", _Identity(), None, threshold_rule="median")


def test_reliability_writer(tmp_path):
    from PIL import Image

    with open(tmp_path / "metrics_per_case.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "label", "p", "p_raw"])
        writer.writeheader()
        for i, (p, y) in enumerate(zip(PROBS, LABELS)):
            writer.writerow({"case": i, "label": y, "p": p, "p_raw": p ** 0.5})
    path = cal.ReliabilityWriter(tmp_path, calibrated="p", uncalibrated="p_raw")(None)
    assert path == str(tmp_path / "reliability.png")
    image = Image.open(path)
    assert image.format == "PNG" and image.size[0] > 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics_per_case.csv", "reliability.png"]


def test_temperature_scaled_divides_the_logits_and_refuses_a_non_positive_temperature():
    import torch

    from common.calibration import TemperatureScaled

    out = TemperatureScaled("pred", 2.0)({"pred": torch.tensor([2.0, -4.0]), "case": "a"})
    assert out["pred"].tolist() == [1.0, -2.0] and out["case"] == "a"
    for bad in (0.0, -1.0, "warm", None):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            TemperatureScaled("pred", bad)
