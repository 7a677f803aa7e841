"""Tests of ``common.losses.CompoundLoss``: exact weighted sums, errors, and configuration from a bundle's JSON."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from common.losses import CompoundLoss, DiceLoss, SensitivitySpecificityLoss


class Constant(nn.Module):
    """A stub loss returning a known value (and recording what it was given)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.seen.append((input, target))
        return input.sum() * 0 + self.value


X, Y = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)


@pytest.mark.parametrize("values,weights,expected", [
    ([2.0, 3.0], [0.5, 4.0], 13.0),  # 0.5*2 + 4*3 = 1 + 12
    ([2.0, 3.0], None, 5.0),  # weights default to 1: 2 + 3
    ([1.5], [2.0], 3.0),  # one term: 2*1.5
    ([1.0, 2.0, 4.0], [0.0, 1.0, 0.25], 3.0),  # 0*1 + 1*2 + .25*4
])
def test_exact_weighted_sum(values, weights, expected):
    terms = [Constant(v) for v in values]
    loss = CompoundLoss(terms, weights)
    assert loss(X, Y).item() == pytest.approx(expected, abs=1e-6)
    assert all(len(t.seen) == 1 and t.seen[0][0] is X and t.seen[0][1] is Y for t in terms)  # same (input, target)


def test_default_weights_are_one():
    assert CompoundLoss([Constant(1.0), Constant(1.0)]).weights.tolist() == [1.0, 1.0]


def test_gradient_flows_through_weighted_terms():
    pred = torch.randn(2, 1, 4, 4, requires_grad=True)
    target = (torch.rand(2, 1, 4, 4) > 0.5).float()
    dice, ss = DiceLoss(sigmoid=True), SensitivitySpecificityLoss(sigmoid=True)
    total = CompoundLoss([dice, ss], [0.3, 0.7])(pred, target)
    assert total.item() == pytest.approx(0.3 * dice(pred, target).item() + 0.7 * ss(pred, target).item(), rel=1e-6)
    total.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_total_is_the_weighted_sum_of_the_real_terms():
    dice, ss = DiceLoss(sigmoid=True), SensitivitySpecificityLoss(sigmoid=True)
    loss = CompoundLoss([dice, ss], [1.0, 2.0])
    pred, target = torch.randn(1, 1, 3, 3), (torch.rand(1, 1, 3, 3) > 0.5).float()
    assert loss(pred, target).item() == pytest.approx(dice(pred, target).item() + 2.0 * ss(pred, target).item(),
                                                      rel=1e-6)
    near_perfect = target * 20 - 10
    assert loss(near_perfect, target).item() == pytest.approx(dice(near_perfect, target).item(), abs=1e-5)


@pytest.mark.parametrize("args,error,match", [
    (([Constant(1.0), Constant(2.0)], [1.0]), ValueError, r"CompoundLoss got 2 losses but 1 weights"),
    (([Constant(1.0)], [1.0, 2.0]), ValueError, r"CompoundLoss got 1 losses but 2 weights"),
    (([Constant(1.0), Constant(2.0)], [1.0, -0.5]), ValueError, r"weights must be non-negative, got \[1.0, -0.5\]"),
    (([], None), ValueError, r"CompoundLoss needs at least one loss"),
    (([Constant(1.0), 3.0], None), TypeError,
     r"every CompoundLoss term must be a torch.nn.Module \(a loss\), got float"),
])
def test_errors(args, error, match):
    with pytest.raises(error, match=match):
        CompoundLoss(*args)


def test_configured_entirely_from_json():
    """The form a bundle's train.json uses: weights are config ids referred to with '@'."""
    config = {
        "dice_weight": 0.4,
        "ss_weight": 1.5,
        "ss_ratio": 0.1,
        "loss": {
            "_target_": "common.losses.CompoundLoss",
            "losses": [
                {"_target_": "common.losses.DiceLoss", "sigmoid": True},
                {"_target_": "common.losses.SensitivitySpecificityLoss", "sigmoid": True, "r": "@ss_ratio"},
            ],
            "weights": ["@dice_weight", "@ss_weight"],
        },
    }
    parser = ConfigParser(config)
    loss = parser.get_parsed_content("loss")
    assert isinstance(loss, CompoundLoss)
    assert loss.weights.tolist() == pytest.approx([0.4, 1.5])
    assert isinstance(loss.losses[0], DiceLoss) and isinstance(loss.losses[1], SensitivitySpecificityLoss)
    assert loss.losses[1].r == pytest.approx(0.1)
    pred, target = torch.randn(2, 1, 4, 4), (torch.rand(2, 1, 4, 4) > 0.5).float()
    expected = 0.4 * DiceLoss(sigmoid=True)(pred, target) + 1.5 * SensitivitySpecificityLoss(sigmoid=True, r=0.1)(
        pred, target)
    assert loss(pred, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # an override of one id (as `--ss_weight 0` on the command line) changes the built loss
    parser["ss_weight"] = 0.0
    rebuilt = parser.get_parsed_content("loss", lazy=False)
    assert rebuilt.weights.tolist() == pytest.approx([0.4, 0.0])
