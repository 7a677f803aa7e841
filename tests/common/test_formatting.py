"""``common.formatting``: the numbers, CIs, units and times that the main job's summary and the report both write."""

from __future__ import annotations

import pytest

from common.formatting import duration, fmt, fmt_ci, metric_unit


@pytest.mark.parametrize("value, text", [(0.8125, "0.8125"), (0.8, "0.8"), (0.78125, "0.7812"), (4.5, "4.5"),
                                         (0, "0"), (3, "3"), (999.99996, "1000"), (12345.6, "1.235e+04"),
                                         (None, "n/a"), (float("nan"), "n/a"), (float("inf"), "n/a"),
                                         (True, "n/a"), ("0.8", "n/a")])
def test_fmt(value, text):
    assert fmt(value) == text


def test_fmt_ci_and_duration():
    assert fmt_ci(0.75, 0.8600) == "[0.75, 0.86]"
    assert fmt_ci(None, 0.9) == "n/a" and fmt_ci(0.1, None) == "n/a"
    assert (duration(0.4), duration(119.4), duration(120), duration(185.0), duration(None)) == (
        "0 s", "119 s", "2.0 min", "3.1 min", "n/a")


@pytest.mark.parametrize("name, unit", [("ef_corr", "correlation (-1 to 1)"), ("mass_corr", "correlation (-1 to 1)"),
                                        ("ef_mae", "%"), ("lv_edv_ml", "ml"), ("myo_mass_g", "g"), ("hd95_wt", "mm"),
                                        ("mean_dice", "score (0-1)"), ("train_loss", "loss (unitless)"),
                                        ("rvef_mae", "%"), ("ef_interval_width", "%"),
                                        ("ef_interval_coverage", "fraction (0-1)"), ("ece", "score (0-1)"),
                                        ("mass_bias", "g"), ("ef_bias", "%"), ("num_masses", "score (0-1)")])
def test_metric_units(name, unit):
    assert metric_unit(name) == unit
