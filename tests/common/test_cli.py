"""common.cli: command-line text that python-fire turns into numbers is put back as typed, or the run is refused."""

from __future__ import annotations

import math
import os

import pytest
from fire import parser as fire_parser

from common.cli import CommandLineError, argv_values, is_string_id, restore_overrides


@pytest.mark.parametrize("text, fire_value", [("1e3", 1000.0), ("1e-4", 0.0001), ("297e7814231", math.inf),
                                              ("2024", 2024), ("1_000", 1000), ("0x10", 16), ("out,v2", ("out", "v2"))])
def test_fire_really_turns_these_into_non_text(text, fire_value):
    """The premise, pinned: if fire stops doing this, the restoring below is moot, not wrong."""
    assert fire_parser.DefaultParseValue(text) == fire_value


def test_argv_values_reads_both_forms_and_dashes():
    argv = ["run", "--config_file", "a.json", "--output_dir", "1e3", "--dataset-dir=297e7814231", "--resume",
            "--epochs", "2", "--ckpt_path", "-1", "--", "--help"]
    assert argv_values(argv) == {"config_file": ["a.json"], "output_dir": ["1e3"], "dataset_dir": ["297e7814231"],
                                 "epochs": ["2"], "ckpt_path": ["-1"]}


def test_string_ids():
    for name in ("output_dir", "dataset_dir", "input_dir", "ckpt_path", "datalist", "tracking_uri", "run_name",
                 "experiment_name", "predict#output_dir", "train::x_file", "pretrained_ckpt"):
        assert is_string_id(name), name
    for name in ("epochs", "val_interval", "seed", "threshold", "num_cases", "learning_rate", "resume"):
        assert not is_string_id(name), name


def test_restore_overrides_puts_back_the_typed_text():
    argv = ["run", "--config_file", "t.json", "--output_dir", "1e3", "--dataset_dir=297e7814231", "--input_dir",
            "1e-4", "--run_name", "2024", "--epochs", "1e1", "--ckpt_path", "x/model.pt"]
    config = {"output_dir": 1000.0, "dataset_dir": math.inf, "input_dir": 0.0001, "run_name": 2024, "epochs": 10.0,
              "ckpt_path": "x/model.pt", "datalist": None, "bundle_root": "$x"}
    restored = restore_overrides(config, argv)
    assert restored == {"output_dir": "1e3", "dataset_dir": "297e7814231", "input_dir": "1e-4", "run_name": "2024"}
    assert config == {"output_dir": "1e3", "dataset_dir": "297e7814231", "input_dir": "1e-4", "run_name": "2024",
                      "epochs": 10.0, "ckpt_path": "x/model.pt", "datalist": None, "bundle_root": "$x"}


def test_restore_overrides_nested_id_and_tuple():
    config = {"predict": {"output_dir": ("out", "v2")}}
    assert restore_overrides(config, ["run", "--predict#output_dir", "out,v2"]) == {"predict#output_dir": "out,v2"}
    assert config == {"predict": {"output_dir": "out,v2"}}


def test_a_number_that_is_not_on_the_command_line_is_refused():
    with pytest.raises(CommandLineError) as err:
        restore_overrides({"output_dir": 1000.0}, ["run", "--config_file", "t.json"])
    assert isinstance(err.value, SystemExit)
    message = str(err.value)
    assert "--output_dir was read as the float 1000.0" in message and "nothing was run" in message
    assert "--output_dir '\"1e3\"'" in message


def test_a_key_given_twice_with_different_text_is_refused():
    """fire keeps one of them; which text was meant cannot be told, so nothing is guessed."""
    with pytest.raises(CommandLineError, match=r"--output_dir was read as the float 1000.0 \(typed '1000.0'\)"):
        restore_overrides({"output_dir": 1000.0}, ["run", "--output_dir", "1e3", "--output_dir", "1000.0"])


def test_text_that_fire_kept_is_left_alone():
    config = {"output_dir": "1e3", "datalist": None, "resume": True}
    assert restore_overrides(config, ["run", "--output_dir", "'1e3'", "--datalist", "None"]) == {}
    assert config == {"output_dir": "1e3", "datalist": None, "resume": True}


def test_config_import_restores_in_a_real_monai_parse(monkeypatch, tmp_path):
    """Through MONAI itself: the import in ``imports`` runs before ``output_dir`` is resolved, at every parse."""
    from monai.bundle import ConfigParser

    monkeypatch.setattr("sys.argv", ["monai.bundle", "run", "--output_dir", "1e3", "--run_name=297e7814231"])
    for _ in range(2):  # a second run in the same interpreter is checked again (a plain import would run once)
        parser = ConfigParser({"imports": ["$import os", "$from common.cli import command_line"],
                               "output_dir": "$'default'", "out": "$os.path.join(str(@output_dir), 'models')",
                               "run_name": "x", "epochs": 2})
        parser.update({"output_dir": 1000.0, "run_name": math.inf, "epochs": 2})
        assert parser.get_parsed_content("out") == os.path.join("1e3", "models")
        assert parser.get_parsed_content("run_name") == "297e7814231"
        assert parser["output_dir"] == "1e3" and parser.get_parsed_content("epochs") == 2


def test_config_import_refuses_an_untraceable_number(monkeypatch):
    from monai.bundle import ConfigParser

    monkeypatch.setattr("sys.argv", ["python", "-c"])
    parser = ConfigParser({"imports": ["$from common.cli import command_line"], "output_dir": "x"})
    parser.update({"output_dir": 1e-4})
    with pytest.raises(CommandLineError, match="--output_dir was read as the float 0.0001"):
        parser.get_parsed_content("output_dir")


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), ("true", True), (" Yes ", True), (1, True),
                                             ("0", False), ("none", False), ("", False), (None, False)])
def test_as_bool_reads_flags_typed_on_the_command_line(value, expected):
    from common.cli import as_bool

    assert as_bool(value, "strict_rows") is expected


def test_as_bool_names_the_id_on_other_text():
    from common.cli import as_bool

    with pytest.raises(ValueError, match="strict_rows must be true or false, got 'maybe'"):
        as_bool("maybe", "strict_rows")
