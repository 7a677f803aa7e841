"""Tests of ``common.paths``: the bundle is the folder whose configs are run (from the repository root, from the bundle
folder, from a renamed copy elsewhere), with a working-directory fallback when no config file is on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.paths import REPO_ROOT, bundle_root, config_files, on_sys_path

NAME = "zz_paths_fixture_bundle"  # a name no real bundle has, so the repository fallback cannot answer


@pytest.fixture(autouse=True)
def no_config_on_command_line(monkeypatch):
    """The fallback tests must not depend on how pytest itself was called."""
    monkeypatch.setattr("sys.argv", ["pytest"])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundles" / NAME
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text("{}")
    return tmp_path


def test_found_from_root_bundle_folder_and_configs_folder(tree):
    expected = str((tree / "bundles" / NAME).resolve())
    assert bundle_root(NAME, cwd=tree) == expected
    assert bundle_root(NAME, cwd=tree / "bundles" / NAME) == expected
    assert bundle_root(NAME, cwd=tree / "bundles" / NAME / "configs") == expected
    assert bundle_root(NAME, cwd=str(tree)) == expected  # str accepted too


def test_default_cwd_and_relative_cwd(tree, monkeypatch):
    expected = str((tree / "bundles" / NAME).resolve())
    monkeypatch.chdir(tree / "bundles" / NAME)
    assert bundle_root(NAME) == expected
    assert bundle_root(NAME, cwd=".") == expected
    assert bundle_root(NAME, cwd="configs") == expected
    monkeypatch.chdir(tree / "bundles" / NAME / "configs")
    assert bundle_root(NAME) == expected


def test_folder_without_metadata_is_not_a_bundle(tree):
    (tree / "bundles" / NAME / "configs" / "metadata.json").unlink()
    with pytest.raises(FileNotFoundError):
        bundle_root(NAME, cwd=tree)


def test_not_found_names_what_was_tried(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        bundle_root(NAME, cwd=tmp_path, argv=[])
    message = str(info.value)
    assert f"bundle {NAME} not found" in message
    for tried in (tmp_path, tmp_path / "bundles" / NAME, REPO_ROOT / "bundles" / NAME):
        assert str(tried) in message
    assert "--bundle_root" in message and "--config_file" in message


def test_repository_fallback_finds_real_bundles(tmp_path):
    real = sorted(p.name for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
    if not real:
        pytest.skip("no bundle with configs/metadata.json in the repository yet")
    assert bundle_root(real[0], cwd=tmp_path) == str((REPO_ROOT / "bundles" / real[0]).resolve())


def test_config_files_read_as_monai_reads_them():
    assert config_files(["m", "run", "--config_file", "configs/train.json"]) == ["configs/train.json"]
    assert config_files(["m", "--config_file", "['bundles/a/configs/train.json','bundles/a/configs/tiny.json']"]) == [
        "bundles/a/configs/train.json", "bundles/a/configs/tiny.json"]
    assert config_files(["m", "--config_file=configs/a.json,configs/b.json"]) == ["configs/a.json", "configs/b.json"]
    assert config_files(["m", "run", "--dataset_dir", "d"]) == []


def test_command_line_config_gives_the_bundle_from_root_folder_and_renamed_copy(tree, tmp_path_factory):
    """The rule: the parent of the ``configs`` folder of the first config file, whatever the folder is called."""
    bundle = tree / "bundles" / NAME
    expected = str(bundle.resolve())
    root_form = ["m", "run", "--config_file", f"['bundles/{NAME}/configs/train.json','bundles/{NAME}/configs/x.json']"]
    assert bundle_root(NAME, cwd=tree, argv=root_form) == expected
    assert bundle_root(NAME, cwd=bundle, argv=["m", "run", "--config_file", "configs/train.json"]) == expected
    assert bundle_root(None, cwd="/", argv=["m", "--config_file", str(bundle / "configs" / "train.json")]) == expected
    copy = tmp_path_factory.mktemp("elsewhere") / "renamed_copy"  # no longer called NAME, not under bundles/
    (copy / "configs").mkdir(parents=True)
    (copy / "configs" / "metadata.json").write_text("{}")
    got = bundle_root(NAME, cwd=copy, argv=["m", "run", "--config_file", "configs/train.json"])
    assert got == str(copy.resolve())  # not the repository's (or the tree's) bundles/NAME


def test_command_line_config_outside_a_bundle_is_an_error(tree):
    with pytest.raises(FileNotFoundError) as info:
        bundle_root(NAME, cwd=tree, argv=["m", "run", "--config_file", "elsewhere/train.json"])
    assert "--config_file" in str(info.value) and str(tree / "elsewhere") in str(info.value)


def test_on_sys_path_adds_the_bundle_once(tmp_path, monkeypatch):
    (tmp_path / "scripts").mkdir()
    monkeypatch.setattr("sys.path", ["", "/usr/lib/python3"])
    import sys

    assert on_sys_path(str(tmp_path)) == str(tmp_path)
    assert sys.path == ["", str(tmp_path), "/usr/lib/python3"]
    on_sys_path(tmp_path)
    assert sys.path.count(str(tmp_path)) == 1
    with pytest.raises(FileNotFoundError, match="no scripts/ folder"):
        on_sys_path(tmp_path / "missing")
