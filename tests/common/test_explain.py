"""common.explain: Grad-CAM maps through MONAI, overlays, and the CAM-in-lesion share by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common import explain


def test_mass_inside_and_area_fraction_by_hand():
    cam = np.array([[1.0, 0.0], [1.0, 2.0]])
    mask = np.array([[1, 0], [0, 1]])
    assert explain.mass_inside(cam, mask) == pytest.approx(3 / 4)  # (1 + 2) / (1 + 1 + 2)
    assert explain.area_fraction(mask) == pytest.approx(0.5)
    assert explain.mass_inside(np.ones((2, 2)), mask) == pytest.approx(explain.area_fraction(mask))  # uniform map
    assert explain.mass_inside(np.zeros((2, 2)), mask) is None
    with pytest.raises(ValueError, match="differ in shape"):
        explain.mass_inside(np.ones((2, 3)), mask)


@pytest.mark.parametrize("value, expected", [(True, True), ("false", False), ("True", True), ("0", False)])
def test_enabled(value, expected):
    assert explain.enabled(value) is expected


def test_enabled_refuses_other_text():
    with pytest.raises(ValueError, match="explain must be true or false"):
        explain.enabled("maybe")


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_grad_cam_shape_range_and_bad_layer():
    torch.manual_seed(0)
    net = _Net().eval()
    cam = explain.GradCam(net, "features.1", class_idx=1)(torch.rand(2, 1, 16, 12))
    assert cam.shape == (2, 16, 12) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    with pytest.raises(ValueError, match="explain_layer 'features.9' is not a layer"):
        explain.GradCam(net, "features.9")


class _OneBlock(torch.nn.Module):
    """Class 1's logit is the mean of relu(x): its Grad-CAM is x where x > 0, its evidence lies where x is bright."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1, bias=False)
        self.relu = torch.nn.ReLU()
        self.head = torch.nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))

    def forward(self, x):
        return self.head(self.relu(self.conv(x)).mean(dim=(2, 3)))


def test_grad_cam_is_hot_where_the_evidence_is():
    """MONAI's default post-processing maps (min, max) to (1, 0); GradCam must not: the 2 x 2 block that makes the
    class-1 logit scores 1 and the rest 0 (class-1 gradient 1/64 per channel, activation 1 there and 0 elsewhere)."""
    x = torch.zeros(2, 1, 8, 8)
    x[0, 0, 2:4, 2:4] = 1.0
    x[1, 0, 5:, :3] = 0.5  # a second image: the evidence elsewhere, at half strength, is still scaled to 1
    cam = explain.GradCam(_OneBlock(), "relu", class_idx=1)(x)
    expected = np.zeros((2, 8, 8), np.float32)
    expected[0, 2:4, 2:4] = 1.0
    expected[1, 5:, :3] = 1.0
    np.testing.assert_allclose(cam, expected, atol=1e-6)
    assert explain.mass_inside(cam[0], expected[0]) == 1.0 and explain.area_fraction(expected[0]) == 4 / 64
    # class 0's score falls with the same pixels: no positive evidence anywhere, an all-zero map (mass undefined)
    none = explain.GradCam(_OneBlock(), "relu", class_idx=0)(x)
    assert not none.any() and explain.mass_inside(none[0], expected[0]) is None


def test_overlay_grey_and_rgb():
    cam = np.zeros((3, 2))
    grey = explain.overlay(np.full((3, 2), 0.5), cam, scale=2)
    assert grey.shape == (6, 4, 3) and grey.dtype == np.uint8 and (grey == 128).all()  # no CAM: the image itself
    rgb = explain.overlay(np.ones((3, 2, 3)), np.ones((3, 2)), scale=1)
    assert rgb.shape == (3, 2, 3) and (rgb[..., 0] > rgb[..., 2]).all()  # CAM 1: jet's dark red blended in
