"""common.scanners: the simulated-scanner look-up and the MR tissue-contrast + bias-field response, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from common import scanners

TABLE = {"A": {"contrast": 1.0}, "C": {"contrast": 1.5}, "B": {"contrast": 0.5}}


def test_lookup_returns_the_row_and_refuses_an_unknown_id_naming_the_known_ones():
    assert scanners.scanner_response(TABLE, "B") is TABLE["B"]
    with pytest.raises(ValueError, match=r"^unknown scanner 'Z': choose one of \['A', 'B', 'C'\]$"):
        scanners.scanner_response(TABLE, "Z")


def test_default_response_returns_the_image_itself():
    image = np.full((2, 2), 0.3, np.float64)
    assert scanners.contrast_and_bias(image, 1.0, 0.0, np.zeros(2)) is image


def test_contrast_and_bias_hand_computed():
    # 0.25 ** 0.5 = 0.5 and 0.64 ** 0.5 = 0.8; a negative intensity is clipped to 0 first
    image = np.array([[0.25, 0.64, -0.1]], np.float32)
    u = np.array([[-1.0], [0.0], [1.0]])  # broadcast along a new first axis: (3, 1) * (1, 3) -> (3, 3)
    out = scanners.contrast_and_bias(image, 0.5, np.log(2.0), u)  # exp(log 2 * u) = 0.5, 1, 2
    assert out.dtype == np.float32 and out.shape == (3, 3)
    np.testing.assert_allclose(out, [[0.25, 0.4, 0.0], [0.5, 0.8, 0.0], [1.0, 1.6, 0.0]], rtol=1e-6)
    # contrast alone (bias 0): 0.25 ** 2 = 0.0625
    np.testing.assert_allclose(scanners.contrast_and_bias(np.array([0.25]), 2.0, 0.0, np.array([1.0])), [0.0625])
