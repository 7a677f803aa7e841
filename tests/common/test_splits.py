"""common.splits: one seeded split, one splits.json layout, re-read when present (as nnU-Net's splits_final.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common import splits
from common.validation import DatasetError

CASES = ["a", "b", "c", "d", "e"]


def test_seeded_split_is_the_documented_draw():
    # numpy.random.default_rng(0).permutation(5) is [2, 4, 3, 0, 1]; val_fraction 0.4 of 5 cases holds out 2:
    # the first two of that order, cases 2 and 4 ("c", "e")
    assert list(np.random.default_rng(0).permutation(5)) == [2, 4, 3, 0, 1]
    assert splits.seeded_split(CASES, 0.4, 0) == {"train": ["a", "b", "d"], "validation": ["c", "e"]}
    # seed 7: order [2, 0, 4, 1, 3]; 0.2 of 5 is one case, "c"
    assert splits.seeded_split(CASES, 0.2, 7) == {"train": ["a", "b", "d", "e"], "validation": ["c"]}


@pytest.mark.parametrize("fraction", [0.9, 0.99])
def test_training_part_is_never_empty(fraction):
    split = splits.seeded_split(CASES, fraction, 0)
    assert split == {"train": ["b"], "validation": ["a", "c", "d", "e"]}  # order [2, 4, 3, 0, 1]: all but the last
    assert splits.seeded_split(["x", "y"], 0.01, 0)["validation"] != []  # and never an empty validation part


def test_groups_stay_together_and_strata_each_give_their_share():
    groups = {"a1": "A", "a2": "A", "b1": "B", "c1": "C", "d1": "D", "e1": "E", "f1": "F"}
    strata = {"a1": 0, "a2": 0, "b1": 0, "c1": 0, "d1": 1, "e1": 1, "f1": 1}
    # stratum 0: groups [A, B, C] shuffled by default_rng(3) -> [C, B, A]; 4 cases * 0.34 = 1.36 wanted: C (1 case)
    # stratum 1: [D, E, F] shuffled next -> [D, F, E]; 3 * 0.34 = 1.02 wanted: D
    split = splits.seeded_split(list(groups), 0.34, 3, groups=groups, strata=strata)
    assert split == {"train": ["a1", "a2", "b1", "e1", "f1"], "validation": ["c1", "d1"]}


def test_too_few_cases_or_bad_fraction_are_errors():
    with pytest.raises(ValueError, match="at least 2"):
        splits.seeded_split(["a"], 0.5, 0)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        splits.seeded_split(CASES, 1.0, 0)


NEEDED = "(one held out for validation, one trained on)"


def test_too_few_cases_name_the_data_set_and_the_counts_found_and_needed(tmp_path):
    # one case: nothing to hold out; the data set folder (dataset_dir) is named on the last line, nothing is written
    with pytest.raises(splits.TooFewCasesError) as error:
        splits.training_split(tmp_path / "out", ["a"], dataset_dir="/data/cases")
    assert isinstance(error.value, DatasetError) and isinstance(error.value, ValueError)
    assert str(error.value).splitlines()[-1] == (
        f"  - /data/cases: 1 case(s) found; a train/validation split needs at least 2 cases {NEEDED}")
    assert not (tmp_path / "out").exists()
    # two views of one patient: 2 cases but 1 patient; the list file given as ``dataset`` is named, not dataset_dir
    with pytest.raises(splits.TooFewCasesError) as error:
        splits.training_split(None, ["p1_cc", "p1_mlo"], groups={"p1_cc": "p1", "p1_mlo": "p1"}, group_by="patient",
                              dataset_dir="/data", dataset="/data/train.csv")
    assert str(error.value).splitlines()[-1] == (
        f"  - /data/train.csv: 2 case(s) of 1 patient(s) found; a train/validation split needs at least 2 patients "
        f"{NEEDED}")
    # no case at all (an empty folder)
    with pytest.raises(splits.TooFewCasesError, match=r"  - /empty: 0 case\(s\) found; .* at least 2 cases"):
        splits.training_split(None, [], dataset_dir="/empty")
    # a split named by a datalist with an empty part
    with pytest.raises(splits.TooFewCasesError) as error:
        splits.training_split(None, ["a", "b"], given={"train": ["a", "b"], "validation": []}, source="datalist",
                              dataset="/data/list.json")
    assert str(error.value).splitlines()[-1] == (
        "  - /data/list.json: 2 training and 0 validation case(s) found; a train/validation split needs at least 1 in "
        "each")
    # two cases are enough: default_rng(0) keeps the order [a, b]; 0.5 of 2 holds out one, the first
    assert splits.training_split(None, ["a", "b"], 0.5, dataset_dir="/data") == {"train": ["b"], "validation": ["a"]}


def test_written_once_then_re_read_even_with_another_seed(tmp_path):
    first = splits.training_split(tmp_path, CASES, 0.4, seed=0, dataset_dir="/data")
    record = json.loads((tmp_path / "splits.json").read_text())
    assert record["format"] == "splits/1" and record["source"] == "seeded" and record["seed"] == 0
    assert (record["train"], record["validation"]) == (["a", "b", "d"], ["c", "e"]) == (first["train"],
                                                                                          first["validation"])
    again = splits.training_split(tmp_path, CASES + ["f"], 0.2, seed=7)  # resumed run, other seed, one new case
    assert again == first
    assert json.loads((tmp_path / "splits.json").read_text()) == record  # not rewritten


def test_a_file_that_does_not_match_the_data_is_an_error_naming_it(tmp_path):
    splits.training_split(tmp_path, CASES, 0.4, seed=0)
    with pytest.raises(splits.SplitsFileError, match=r"splits.json: 2 listed case\(s\) are not in the data"):
        splits.training_split(tmp_path, ["a", "b", "d"], 0.4, seed=0)
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["a"], "val": ["b"]}))  # an old layout
    with pytest.raises(splits.SplitsFileError, match="splits.json: unknown splits layout") as error:
        splits.training_split(tmp_path, CASES, 0.4, seed=0)
    assert str(error.value).splitlines()[-1].startswith(f"  - {tmp_path / 'splits.json'}: ")


def test_evaluating_training_cases_is_named(tmp_path, caplog):
    splits.training_split(tmp_path, CASES, 0.4, seed=0, dataset_dir=tmp_path / "data")  # trains on a, b, d
    with caplog.at_level("WARNING"):
        assert splits.trained_on(tmp_path, tmp_path / "data", CASES) == ["a", "b", "d"]
    assert "3 of the 5 evaluated cases were trained on" in caplog.text
    assert splits.trained_on(tmp_path, tmp_path / "other_data", CASES) == []  # held-out data set: nothing to say


def test_a_given_split_is_recorded_with_its_source(tmp_path):
    given = {"train": ["a", "b"], "validation": ["c"]}
    assert splits.training_split(tmp_path, CASES, given=given, source="layout") == given
    assert json.loads((tmp_path / "splits.json").read_text())["source"] == "layout"
