"""Tests of ``common.losses.SensitivitySpecificityLoss`` (STYLE.md G4).

Notation in the comments: per channel, ``sens = sum((g-p)^2 * g) / sum(g)`` (error on the class voxels) and
``spec = sum((g-p)^2 * (1-g)) / sum(1-g)`` (error on the other voxels); ``loss_c = r * sens + (1 - r) * spec``.
The table rows pass ``eps=1e-8`` so that the hand arithmetic is exact to float32 precision.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from common.losses import CompoundLoss, DiceLoss, SensitivitySpecificityLoss, SSLoss

LN3 = math.log(3.0)  # softmax([ln 3, 0]) = [3/4, 1/4]
EPS = {"eps": 1e-8}

TEST_CASES = [
    # 0. no activation, input/target (1,1,2,2); p=[.5,0,1,.5], g=[1,0,0,1]; errors [.25,0,1,.25]
    #    sens = (.25+.25)/2 = .25; spec = (0+1)/2 = .5; r=.05: .05*.25 + .95*.5 = .0125 + .475 = .4875
    ({**EPS}, [[[[0.5, 0.0], [1.0, 0.5]]]], [[[[1.0, 0.0], [0.0, 1.0]]]], 0.4875),
    # 1. same tensors, r=.5: .5*.25 + .5*.5 = .375
    ({"r": 0.5, **EPS}, [[[[0.5, 0.0], [1.0, 0.5]]]], [[[[1.0, 0.0], [0.0, 1.0]]]], 0.375),
    # 2. r=1 (sensitivity term only): .25;  3. r=0 (specificity term only): .5
    ({"r": 1.0, **EPS}, [[[[0.5, 0.0], [1.0, 0.5]]]], [[[[1.0, 0.0], [0.0, 1.0]]]], 0.25),
    ({"r": 0.0, **EPS}, [[[[0.5, 0.0], [1.0, 0.5]]]], [[[[1.0, 0.0], [0.0, 1.0]]]], 0.5),
    # 4. sigmoid, (1,1,2,2); logits [0,0,100,-100] -> p=[.5,.5,1,0]; g=[1,0,0,0]
    #    sens = .25/1 = .25; spec = (.25 + 1 + 0)/3 = 1.25/3; .05*.25 + .95*1.25/3 = .0125 + .39583333 = .40833333
    ({"sigmoid": True, **EPS}, [[[[0.0, 0.0], [100.0, -100.0]]]], [[[[1.0, 0.0], [0.0, 0.0]]]],
     0.0125 + 0.95 * 1.25 / 3),
    # 5. softmax over 2 channels, (1,2,1,2); voxel a logits (0,0) -> p=(.5,.5), class 1; voxel b (ln3,0) -> (.75,.25),
    #    class 0.  ch0: g=[0,1], p=[.5,.75]: sens=(.25)^2=.0625, spec=.5^2=.25 -> .05*.0625+.95*.25 = .240625
    #              ch1: g=[1,0], p=[.5,.25]: sens=.25, spec=.0625 -> .05*.25+.95*.0625 = .071875
    #    mean over channels: (.240625 + .071875)/2 = .15625 (= (.25 + .0625)/2, r cancels)
    ({"softmax": True, **EPS}, [[[[0.0, LN3]], [[0.0, 0.0]]]], [[[[0.0, 1.0]], [[1.0, 0.0]]]], 0.15625),
    # 6. the same with to_onehot_y: target (1,1,1,2) holds the class indices [1, 0]
    ({"softmax": True, "to_onehot_y": True, **EPS}, [[[[0.0, LN3]], [[0.0, 0.0]]]], [[[[1.0, 0.0]]]], 0.15625),
    # 7. include_background=False: only ch1 = .071875
    ({"softmax": True, "to_onehot_y": True, "include_background": False, **EPS},
     [[[[0.0, LN3]], [[0.0, 0.0]]]], [[[[1.0, 0.0]]]], 0.071875),
    # 8. reduction none, (B,C)=(1,2): [[.240625, .071875]]
    ({"softmax": True, "reduction": "none", **EPS}, [[[[0.0, LN3]], [[0.0, 0.0]]]], [[[[0.0, 1.0]], [[1.0, 0.0]]]],
     [[0.240625, 0.071875]]),
    # 9. reduction sum: .240625 + .071875 = .3125
    ({"softmax": True, "reduction": "sum", **EPS}, [[[[0.0, LN3]], [[0.0, 0.0]]]], [[[[0.0, 1.0]], [[1.0, 0.0]]]],
     0.3125),
    # 10-12. batch=False, (2,1,1,3).  sample 0: p=g=[1,1,0] -> 0.
    #        sample 1: g=[1,0,0], p=[0,.5,0]: sens = 1/1 = 1, spec = (.25+0)/2 = .125 -> .05 + .95*.125 = .16875
    ({"reduction": "none", **EPS}, [[[[1.0, 1.0, 0.0]]], [[[0.0, 0.5, 0.0]]]],
     [[[[1.0, 1.0, 0.0]]], [[[1.0, 0.0, 0.0]]]], [[0.0], [0.16875]]),
    ({"reduction": "mean", **EPS}, [[[[1.0, 1.0, 0.0]]], [[[0.0, 0.5, 0.0]]]],
     [[[[1.0, 1.0, 0.0]]], [[[1.0, 0.0, 0.0]]]], 0.084375),  # (0 + .16875)/2
    ({"reduction": "sum", **EPS}, [[[[1.0, 1.0, 0.0]]], [[[0.0, 0.5, 0.0]]]],
     [[[[1.0, 1.0, 0.0]]], [[[1.0, 0.0, 0.0]]]], 0.16875),  # 0 + .16875
    # 13. batch=True, same tensors: sums over the batch first.  class voxels: s0 (0,0), s1 (1) -> sens = 1/3;
    #     other voxels: s0 (0), s1 (.25, 0) -> spec = .25/3; .05/3 + .95*.25/3 = .2875/3 = .09583333; shape (C,)=(1,)
    ({"batch": True, "reduction": "none", **EPS}, [[[[1.0, 1.0, 0.0]]], [[[0.0, 0.5, 0.0]]]],
     [[[[1.0, 1.0, 0.0]]], [[[1.0, 0.0, 0.0]]]], [0.2875 / 3]),
    ({"batch": True, "reduction": "mean", **EPS}, [[[[1.0, 1.0, 0.0]]], [[[0.0, 0.5, 0.0]]]],
     [[[[1.0, 1.0, 0.0]]], [[[1.0, 0.0, 0.0]]]], 0.2875 / 3),
    # 15. other_act=x/2, (1,1,1,2); input [1,2] -> p=[.5,1]; g=[1,0]: sens=.25, spec=1 -> .0125 + .95 = .9625
    ({"other_act": lambda x: x / 2, **EPS}, [[[[1.0, 2.0]]]], [[[[1.0, 0.0]]]], 0.9625),
    # 16. 3D, (1,1,2,1,1); p=[.5,.5], g=[1,0]: sens=.25, spec=.25 -> .25 for any r (here r=.3)
    ({"r": 0.3, **EPS}, [[[[[0.5]], [[0.5]]]]], [[[[[1.0]], [[0.0]]]]], 0.25),
    # 17. default eps=1e-5 with row 0's tensors: .05*.5/(2+1e-5) + .95*1/(2+1e-5) = .975/2.00001
    ({}, [[[[0.5, 0.0], [1.0, 0.5]]]], [[[[1.0, 0.0], [0.0, 1.0]]]], 0.975 / 2.00001),
]


@pytest.mark.parametrize("kwargs,input_data,target_data,expected", TEST_CASES)
def test_hand_computed_values(kwargs, input_data, target_data, expected):
    loss = SensitivitySpecificityLoss(**kwargs)(torch.tensor(input_data), torch.tensor(target_data))
    expected = torch.tensor(expected, dtype=torch.float32)
    assert loss.shape == expected.shape
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_ssloss_alias():
    assert SSLoss is SensitivitySpecificityLoss


@pytest.mark.parametrize("batch,shape", [(False, (3, 4)), (True, (4,))])
def test_reduction_none_shape(batch, shape):
    loss = SensitivitySpecificityLoss(reduction="none", batch=batch)(torch.rand(3, 4, 5, 6), torch.rand(3, 4, 5, 6))
    assert loss.shape == shape


@pytest.mark.parametrize("kwargs", [{}, {"batch": True}, {"include_background": False}, {"r": 0.9}])
def test_perfect_prediction_is_zero(kwargs):
    target = (torch.rand(2, 3, 6, 5) > 0.5).float()
    assert SensitivitySpecificityLoss(**kwargs)(target.clone(), target).item() == 0.0
    # softmax of very confident logits and one-hot labels from indices
    labels = torch.randint(0, 3, (2, 1, 6, 5))
    logits = 50.0 * nn.functional.one_hot(labels[:, 0], 3).permute(0, 3, 1, 2).float()
    value = SensitivitySpecificityLoss(softmax=True, to_onehot_y=True, **kwargs)(logits, labels)
    assert value.item() == pytest.approx(0.0, abs=1e-12)


def _terms(p: torch.Tensor, g: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Sensitivity and specificity terms per (B, C), written out directly."""
    err = (g - p) ** 2
    sens = (err * g).sum((2, 3)) / (g.sum((2, 3)) + eps)
    spec = (err * (1 - g)).sum((2, 3)) / ((1 - g).sum((2, 3)) + eps)
    return sens, spec


def test_r_one_and_zero_are_the_pure_terms():
    torch.manual_seed(0)
    p, g = torch.rand(2, 3, 5, 5), (torch.rand(2, 3, 5, 5) > 0.6).float()
    sens, spec = _terms(p, g)
    torch.testing.assert_close(SensitivitySpecificityLoss(r=1.0, reduction="none")(p, g), sens)
    torch.testing.assert_close(SensitivitySpecificityLoss(r=0.0, reduction="none")(p, g), spec)
    mixed = SensitivitySpecificityLoss(r=0.2, reduction="none")(p, g)
    torch.testing.assert_close(mixed, 0.2 * sens + 0.8 * spec)


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("kwargs", [{}, {"sigmoid": True}, {"softmax": True}, {"include_background": False}])
def test_empty_class_is_finite(batch, kwargs):
    target = torch.zeros(2, 3, 4, 4)
    target[:, 0] = 1.0  # classes 1 and 2 absent everywhere (also over the whole batch)
    pred = torch.rand(2, 3, 4, 4, requires_grad=True)
    loss = SensitivitySpecificityLoss(batch=batch, **kwargs)(pred, target)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    # an all-foreground channel (no background voxel) is finite too
    none = SensitivitySpecificityLoss(batch=batch, reduction="none")(torch.rand(2, 3, 4, 4), torch.ones(2, 3, 4, 4))
    assert torch.isfinite(none).all()


def test_backward_gives_finite_nonzero_gradients():
    pred = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 4, 4))
    SensitivitySpecificityLoss(softmax=True, to_onehot_y=True)(pred, target).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs", [{"sigmoid": True}, {"softmax": True, "include_background": False},
                                    {"sigmoid": True, "batch": True, "r": 0.3}])
def test_gradcheck_float64(kwargs):
    torch.manual_seed(1)
    pred = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(2, 2, 3, dtype=torch.float64) > 0.5).double()
    loss = SensitivitySpecificityLoss(**kwargs)
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (pred,), eps=1e-6, atol=1e-6)


def numpy_ss(p: np.ndarray, g: np.ndarray, r: float, eps: float, include_background: bool, batch: bool) -> np.ndarray:
    """Independent loop implementation of Brosch et al.'s formula; returns (B, C) or (C,) with ``batch``."""
    if not include_background:
        p, g = p[:, 1:], g[:, 1:]
    n_b, n_c = p.shape[:2]
    groups = [list(range(n_b))] if batch else [[b] for b in range(n_b)]
    out = np.zeros((len(groups), n_c))
    for k, group in enumerate(groups):
        for c in range(n_c):
            fg_err = fg_n = bg_err = bg_n = 0.0
            for b in group:
                for gi, pi in zip(g[b, c].ravel(), p[b, c].ravel()):
                    if gi == 1:
                        fg_err, fg_n = fg_err + (1 - pi) ** 2, fg_n + 1
                    else:
                        bg_err, bg_n = bg_err + pi ** 2, bg_n + 1
            out[k, c] = r * fg_err / (fg_n + eps) + (1 - r) * bg_err / (bg_n + eps)
    return out[0] if batch else out


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [True, False])
def test_agrees_with_numpy(spatial, include_background, batch):
    rng = np.random.default_rng(hash((spatial, include_background, batch)) % 2**32)
    p = rng.random((2, 3, *spatial))
    g = (rng.random((2, 3, *spatial)) < 0.3).astype(float)
    r, eps = float(rng.uniform(0, 1)), 1e-5
    ours = SensitivitySpecificityLoss(r=r, eps=eps, include_background=include_background, batch=batch,
                                      reduction="none")(torch.from_numpy(p), torch.from_numpy(g))
    np.testing.assert_allclose(ours.numpy(), numpy_ss(p, g, r, eps, include_background, batch), rtol=1e-10)
    mean = SensitivitySpecificityLoss(r=r, include_background=include_background, batch=batch)(
        torch.from_numpy(p), torch.from_numpy(g))
    assert mean.item() == pytest.approx(numpy_ss(p, g, r, eps, include_background, batch).mean(), rel=1e-10)


def test_2d_and_3d_give_the_same_per_voxel_answer():
    torch.manual_seed(2)
    p2, g2 = torch.rand(2, 3, 4, 6), (torch.rand(2, 3, 4, 6) > 0.5).float()
    loss = SensitivitySpecificityLoss(sigmoid=True, reduction="none")
    for p3, g3 in [(p2[..., None], g2[..., None]), (p2.reshape(2, 3, 4, 2, 3), g2.reshape(2, 3, 4, 2, 3))]:
        torch.testing.assert_close(loss(p3, g3), loss(p2, g2))


def test_two_class_softmax_r_cancels_with_background_only():
    torch.manual_seed(3)
    logits = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    labels = torch.randint(0, 2, (2, 1, 5, 5))
    with_bg = [SensitivitySpecificityLoss(softmax=True, to_onehot_y=True, r=r)(logits, labels).item()
               for r in (0.01, 0.5, 0.99)]
    assert with_bg[0] == pytest.approx(with_bg[1], abs=1e-12) and with_bg[1] == pytest.approx(with_bg[2], abs=1e-12)
    no_bg = [SensitivitySpecificityLoss(softmax=True, to_onehot_y=True, r=r, include_background=False)(
        logits, labels).item() for r in (0.01, 0.5, 0.99)]
    assert abs(no_bg[0] - no_bg[1]) > 1e-3 and abs(no_bg[1] - no_bg[2]) > 1e-3


@pytest.mark.parametrize("kwargs,error,match", [
    ({"r": 1.5}, ValueError, r"r \(the sensitivity ratio\) must lie in \[0, 1\], got 1.5"),
    ({"r": -0.1}, ValueError, r"must lie in \[0, 1\], got -0.1"),
    ({"r": float("nan")}, ValueError, r"must lie in \[0, 1\]"),
    ({"eps": 0.0}, ValueError, r"eps must be positive, got 0.0"),
    ({"eps": -1e-5}, ValueError, r"eps must be positive"),
    ({"reduction": "median"}, ValueError, r"Unsupported reduction: median.*\"mean\", \"sum\", \"none\""),
    ({"sigmoid": True, "softmax": True}, ValueError, r"Incompatible values: more than 1 of \[sigmoid=True"),
    ({"softmax": True, "other_act": torch.tanh}, ValueError, r"Incompatible values"),
    ({"other_act": "tanh"}, TypeError, r"other_act must be None or callable but is str"),
])
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        SensitivitySpecificityLoss(**kwargs)


def test_shape_mismatch_errors():
    with pytest.raises(ValueError,
                       match=r"ground truth has different shape \(\(1, 2, 4, 4\)\) from input \(\(1, 3, 4, 4\)\)"):
        SensitivitySpecificityLoss()(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"ground truth has different shape \(\(1, 1, 4, 4\)\)"):
        SensitivitySpecificityLoss()(torch.rand(1, 3, 4, 4), torch.randint(0, 3, (1, 1, 4, 4)))  # no to_onehot_y
    with pytest.raises(ValueError, match=r"at least 3 dimensions"):
        SensitivitySpecificityLoss()(torch.rand(4, 4), torch.rand(4, 4))


@pytest.mark.parametrize("kwargs,match", [
    ({"softmax": True}, r"single channel prediction, `softmax=True` ignored"),
    ({"to_onehot_y": True}, r"single channel prediction, `to_onehot_y=True` ignored"),
    ({"include_background": False}, r"single channel prediction, `include_background=False` ignored"),
])
def test_ignored_flags_warn(kwargs, match):
    pred, target = torch.rand(1, 1, 3, 3), (torch.rand(1, 1, 3, 3) > 0.5).float()
    with pytest.warns(UserWarning, match=match):
        value = SensitivitySpecificityLoss(**kwargs)(pred, target)
    torch.testing.assert_close(value, SensitivitySpecificityLoss()(pred, target))  # the flag really was ignored


def _convergence_losses():
    return {
        "ss": lambda: SensitivitySpecificityLoss(sigmoid=True, r=0.1),
        "dice": lambda: DiceLoss(sigmoid=True),
        "compound": lambda: CompoundLoss([DiceLoss(sigmoid=True), SensitivitySpecificityLoss(sigmoid=True)],
                                         [0.5, 1.0]),
    }


@pytest.mark.parametrize("name", ["ss", "dice", "compound"])
def test_convergence_one_layer_network(name):
    """MONAI's loss integration idea: a one-layer conv network learns a 3x4x4 synthetic segmentation."""
    torch.manual_seed(0)
    target = torch.zeros(1, 1, 3, 4, 4)
    target[:, :, 1:, 1:3, 1:3] = 1.0
    image = target + 0.3 * torch.randn_like(target)
    net = nn.Conv3d(1, 1, kernel_size=3, padding=1)
    loss_fn = _convergence_losses()[name]()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    values = []
    for _ in range(50):
        optimizer.zero_grad()
        loss = loss_fn(net(image), target)
        loss.backward()
        optimizer.step()
        values.append(loss.item())
    assert all(np.isfinite(values))
    assert values[-1] < 0.5 * values[0], f"{name} did not converge: {values[0]:.4f} -> {values[-1]:.4f}"
    assert np.mean(values[-10:]) < np.mean(values[:10])


def test_compound_loss_float64_round_trip():
    loss = CompoundLoss([DiceLoss(sigmoid=True), SensitivitySpecificityLoss(sigmoid=True)], [0.25, 2.0])
    pred, target = torch.randn(2, 1, 4, 4), (torch.rand(2, 1, 4, 4) > 0.5).float()
    value32 = loss(pred, target)
    loss64 = loss.to(torch.float64)
    assert loss64.weights.dtype == torch.float64
    value64 = loss64(pred.double(), target.double())
    assert value64.dtype == torch.float64
    assert value64.item() == pytest.approx(value32.item(), rel=1e-5)
    back = loss64.to(torch.float32)
    assert back.weights.dtype == torch.float32 and back(pred, target).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_compound_loss_cuda_round_trip():
    loss = CompoundLoss([DiceLoss(sigmoid=True), SensitivitySpecificityLoss(sigmoid=True)]).to("cuda", torch.float64)
    pred, target = torch.randn(2, 1, 4, 4), (torch.rand(2, 1, 4, 4) > 0.5).float()
    value = loss(pred.to("cuda", torch.float64), target.to("cuda", torch.float64))
    assert value.device.type == "cuda" and value.dtype == torch.float64
    cpu = loss.to("cpu", torch.float32)(pred, target)
    assert value.item() == pytest.approx(cpu.item(), rel=1e-5)
