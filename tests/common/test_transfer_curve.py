"""Tests of ``common.transfer_curve``: the seed-averaged metric and its bootstrap CI on tiny tables computed by hand,
the arm loop's order and layout with trivial arms, equal optimiser steps with frozen parameters left alone (issue 16).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from common import transfer_curve as tc
from common.transfer import prepare


def test_auc_point_is_the_mean_over_seeds_of_hand_computed_aucs():
    y = np.array([0, 0, 1, 1])
    perfect = np.array([0.1, 0.2, 0.3, 0.4])  # AUC 1
    three_of_four = np.array([0.1, 0.3, 0.2, 0.4])  # positive 0.2 beats 0.1 not 0.3; 0.4 beats both: 3/4
    point, low, high = tc.bootstrap_ci(y, [perfect, three_of_four], tc.auc_metric, n_resamples=50)
    assert point == pytest.approx((1.0 + 0.75) / 2)
    assert 0.0 <= low <= high <= 1.0


def test_seed_mean_that_no_resample_changes_has_a_zero_width_interval():
    # seed 1 scores every case 1, seed 2 scores it 0: every resample's seed mean is 0.5
    point, low, high = tc.bootstrap_ci(np.arange(3), [np.ones(3), np.zeros(3)], tc.mean_of_scores, n_resamples=100)
    assert (point, low, high) == (0.5, 0.5, 0.5)


def test_two_case_bootstrap_spans_both_values():
    # resamples of [0, 1] have means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5th and 97.5th percentiles of
    # 2000 of them are 0 and 1
    point, low, high = tc.bootstrap_ci(np.arange(2), [np.array([0.0, 1.0])], tc.mean_of_scores, n_resamples=2000)
    assert (point, low, high) == (0.5, 0.0, 1.0)


def test_single_class_resamples_are_skipped_and_none_left_is_an_error():
    y = np.array([0, 1])
    point, low, high = tc.bootstrap_ci(y, [np.array([0.2, 0.8])], tc.auc_metric, n_resamples=200)
    assert (point, low, high) == (1.0, 1.0, 1.0)  # only the resamples holding both cases (in either order) count

    def only_the_original(y_, s_):  # scores the unresampled test set only
        if not np.array_equal(y_, np.arange(5)):
            raise ValueError("resampled")
        return 1.0

    with pytest.raises(ValueError, match="none of 10 resamples of 5 test cases"):
        tc.bootstrap_ci(np.arange(5), [np.zeros(5)], only_the_original, n_resamples=10)
    with pytest.raises(ValueError, match="one class"):
        tc.auc_metric(np.array([1, 1]), np.array([0.1, 0.2]))


def test_run_curve_calls_every_arm_per_n_and_seed_in_order_and_lays_out_results():
    calls, written = [], []

    def arm(name):
        def fit(n, seed):
            calls.append((n, seed, name))
            return np.full(3, float(n + seed))  # per-case values: the seed's mean is n + seed
        return fit

    results = tc.run_curve([2, 5], 2, {"a": arm("a"), "b": arm("b")}, np.arange(3), tc.mean_of_scores,
                           n_resamples=20, key="dice", after_size=lambda r: written.append(json.dumps(r)), log=None)
    assert calls == [(2, 0, "a"), (2, 0, "b"), (2, 1, "a"), (2, 1, "b"),
                     (5, 0, "a"), (5, 0, "b"), (5, 1, "a"), (5, 1, "b")]
    assert results["a"][2] == {"dice": 2.5, "ci95": [2.5, 2.5], "dice_per_seed": [2.0, 3.0]}
    assert results["b"][5] == {"dice": 5.5, "ci95": [5.5, 5.5], "dice_per_seed": [5.0, 6.0]}
    assert len(written) == 2 and list(json.loads(written[0])["a"]) == ["2"]  # one JSON per N, N keys as strings
    record = tc.curve_record({"seeds": 2}, {"source": 0.9}, results, {"total": 1.0}, target_test_cases=3)
    assert list(record) == ["settings", "reference", "results", "seconds", "target_test_cases"]


class Recorder(nn.Module):
    """A frozen 'encoder' scale and a trainable 'head' bias; counts forward calls."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(1, 1, 1)
        self.head = nn.Conv2d(1, 1, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.head(self.encoder(x))


def test_train_steps_takes_exactly_steps_updates_flips_target_with_image_and_leaves_frozen_alone(tmp_path):
    torch.manual_seed(0)
    source = Recorder()
    torch.save(source.state_dict(), tmp_path / "src.pt")
    net = prepare(Recorder(), tmp_path / "src.pt", ["encoder"])
    encoder_before = [p.detach().clone() for p in net.encoder.parameters()]
    head_before = [p.detach().clone() for p in net.head.parameters()]
    x = torch.arange(5 * 4 * 4, dtype=torch.float32).reshape(5, 1, 4, 4)
    seen = []

    def loss_fn(out, target):
        seen.append(out.shape[0])
        _same_flip(out, target)  # y is x itself: flipped together, the batch's target is still its own input
        return ((out - target) ** 2).mean()

    tc.train_steps(net, x, x.clone(), loss_fn, steps=7, lr=0.1, seed=3, batch=8, flip_target=True)
    assert net.calls == 7 and seen == [5] * 7  # batch = min(batch, cases)
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, net.encoder.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(head_before, net.head.parameters()))


def _same_flip(out, target):
    """The output of encoder+head (1x1 convs) is affine in the input per pixel, so an input flipped like the target
    gives an output whose argsort over pixels matches the target's, up to the sign of the affine map."""
    o, t = out.detach().flatten(1), target.flatten(1)
    order_o, order_t = o.argsort(dim=1), t.argsort(dim=1)
    assert torch.equal(order_o, order_t) or torch.equal(o.argsort(dim=1, descending=True), order_t)


def test_plot_curve_writes_a_png_from_reloaded_json(tmp_path):
    results = json.loads(json.dumps({"scratch": {10: {"auc": 0.6, "ci95": [0.5, 0.7]},
                                                 25: {"auc": 0.7, "ci95": [0.6, 0.8]}}}))
    path = tc.plot_curve(results, tmp_path / "curve.png", "auc", "N", "AUC", "title", reference=0.65)
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------------------------
# the script around the curve: command line, run set-up, data sets, arms, features + logistic regression, finish


def test_parser_has_the_bundle_defaults_with_the_site_options_before_n_resamples(tmp_path):
    args = tc.parser("d", tmp_path, source_cases=30, test_cases=12, sizes="2,5", steps=120, lr=3e-3, image_size=48,
                     channels="8,16", sites=tc.SCANNER_SITES).parse_args(["--work_dir", "w", "--target_scanner", "C"])
    assert list(vars(args)) == ["work_dir", "source_cases", "test_cases", "sizes", "seeds", "steps", "source_steps",
                                "lr", "image_size", "channels", "source_scanner", "target_scanner", "n_resamples",
                                "plot"]
    assert (args.source_cases, args.seeds, args.source_steps, args.lr, args.n_resamples) == (30, 3, 300, 3e-3, 500)
    assert (args.source_scanner, args.target_scanner) == ("A", "C")
    assert args.plot == str(tmp_path / "docs" / "transfer_curve.png")


def _run(tmp_path, **options):
    argv = ["--work_dir", str(tmp_path / "work"), *[f"--{k}={v}" for k, v in options.items()]]
    args = tc.parser("d", tmp_path, source_cases=3, test_cases=2, sizes="1,4", steps=1, lr=0.1, image_size=8,
                     channels="2,4").parse_args(argv)
    threads = torch.get_num_threads()
    run = tc.start(args)
    torch.set_num_threads(threads)  # start() pins one thread for the process: not for the rest of this session
    return run


def test_start_and_make_sets_draw_each_set_with_its_seed_site_and_size(tmp_path):
    run = _run(tmp_path)
    assert run.work.is_dir() and (run.sizes, run.channels) == ([1, 4], [2, 4]) and run.generated is None
    calls = []
    sets = tc.make_sets(run, lambda n, seed, site, size: calls.append((n, seed, site, size)) or seed, "A", "B")
    assert sets == (1, 2, 3, 4)
    # source: --source_cases 3 at A (seed 1), --test_cases 2 at A (seed 2); pool: largest N 4 at B (seed 3); target
    # test: 2 at B (seed 4); all at --image_size 8
    assert calls == [(3, 1, "A", 8), (2, 2, "A", 8), (4, 3, "B", 8), (2, 4, "B", 8)]
    assert run.generated is not None and run.generated >= 0


class Two(nn.Module):
    """'features' (a 1x1 conv, the encoder) and a 'head'; ``FREEZE`` names the encoder preset."""

    FREEZE = {"encoder": ["features"]}

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(1, 2, 1)
        self.head = nn.Linear(2, 1)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_neural_arms_start_from_random_source_or_frozen_source(tmp_path):
    run = _run(tmp_path)
    source = Two()
    with torch.no_grad():
        source.features.weight.fill_(7.0)
    ckpt = run.save_source(source)
    assert ckpt == run.work / "source_model.pt"
    seen = {}

    def network(seed):
        torch.manual_seed(seed)
        return Two()

    def fit(net, n, seed):
        seen["seed_n"] = (seed, n)
        return net

    def evaluate(net):
        return np.array([float(net.features.weight.flatten()[0]), float(net.features.weight.requires_grad)])

    arms = tc.neural_arms(network, ckpt, Two.FREEZE, fit, evaluate)
    assert list(arms) == ["scratch", "finetune_all", "frozen_encoder"]
    random_weight = float(network(101).features.weight.flatten()[0])
    np.testing.assert_array_equal(arms["scratch"](4, 1), [random_weight, 1.0])  # network(100 + seed), untouched
    assert seen["seed_n"] == (1, 4)
    np.testing.assert_array_equal(arms["finetune_all"](4, 1), [7.0, 1.0])  # source weights, trainable
    np.testing.assert_array_equal(arms["frozen_encoder"](4, 1), [7.0, 0.0])  # source weights, frozen


def test_pooled_features_are_spatial_means():
    net = Two()
    with torch.no_grad():
        net.features.weight.copy_(torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1))
        net.features.bias.zero_()
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])  # mean 3: channel 1 -> 3, channel 2 -> 6
    np.testing.assert_allclose(tc.pooled_features(net, x), [[3.0, 6.0]])


def test_features_logreg_arm_separates_a_separable_pool_and_is_constant_on_one_class():
    x_pool = torch.tensor([[0.0], [10.0], [1.0], [11.0], [0.5]])
    y_pool = torch.tensor([0, 1, 0, 1, 0])
    x_test = torch.tensor([[0.2], [10.5]])
    arm = tc.features_logreg_arm(lambda x: x.numpy(), x_pool, y_pool, x_test)
    p = arm(4, 0)
    assert p[0] < 0.5 < p[1]
    # the first case alone is class 0: no classifier can be fitted; every test case scores 0
    np.testing.assert_array_equal(arm(1, 0), [0.0, 0.0])


def test_finish_writes_the_record_after_every_n_and_the_plot(tmp_path, capsys):
    run = _run(tmp_path, seeds=2, n_resamples=20, plot=tmp_path / "curve.png")
    run.generated = 1.5

    def arm(n, seed):
        return np.full(3, float(n + seed))

    out = tc.finish(run, {"source_dice_on_source_test": 0.9, "source_dice_on_target_test": 0.5}, {"a": arm},
                    np.arange(3), tc.mean_of_scores, "dice", ("N", "Dice", "title"), target_test_cases=3)
    written = json.loads((run.work / "transfer_curve.json").read_text())
    assert written == json.loads(json.dumps(out))
    assert list(written) == ["settings", "reference", "results", "seconds", "target_test_cases"]
    assert written["results"]["a"]["4"] == {"dice": 4.5, "ci95": [4.5, 4.5], "dice_per_seed": [4.0, 5.0]}
    assert written["seconds"]["generate"] == 1.5 and written["settings"]["seeds"] == 2
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "N=4: a 4.500" in capsys.readouterr().out


def test_source_reference_names_the_metric_and_prints_one_json_line(capsys):
    reference = tc.source_reference("auc", np.float64(0.75), 0.5)
    assert reference == {"source_auc_on_source_test": 0.75, "source_auc_on_target_test": 0.5}
    assert json.loads(capsys.readouterr().out) == reference
