"""Tests of ``common.paths.bundle_root``: found from the repository root, the bundle folder and its configs folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.paths import REPO_ROOT, bundle_root

NAME = "zz_paths_fixture_bundle"  # a name no real bundle has, so the repository fallback cannot answer


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
        bundle_root(NAME, cwd=tmp_path)
    message = str(info.value)
    assert f"bundle '{NAME}' not found" in message
    for tried in (tmp_path / "bundles" / NAME, tmp_path, tmp_path.parent, REPO_ROOT / "bundles" / NAME):
        assert str(tried) in message
    assert "--bundle_root" in message and f"bundles/{NAME}" in message


def test_repository_fallback_finds_real_bundles(tmp_path):
    real = sorted(p.name for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
    if not real:
        pytest.skip("no bundle with configs/metadata.json in the repository yet")
    assert bundle_root(real[0], cwd=tmp_path) == str((REPO_ROOT / "bundles" / real[0]).resolve())
