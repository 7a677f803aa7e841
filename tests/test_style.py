"""The Model Zoo's style checks, as CI runs them: ruff (flake8's E/F/W and isort's I rules, configured in
pyproject.toml) over the Python code, and one formatting rule for every bundle's JSON configs (tools/format_configs.py).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("format_configs", REPO / "tools" / "format_configs.py")
format_configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(format_configs)



def test_json_rule_written_by_hand(tmp_path):
    text = '{"b": [1, 2], "a": {"x": "µm"}}'
    expected = '{\n    "b": [\n        1,\n        2\n    ],\n    "a": {\n        "x": "µm"\n    }\n}\n'
    assert format_configs.formatted(text) == expected  # key order kept, 4 spaces, no \u escapes, final newline
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(expected)
    bad.write_text(text)
    assert format_configs.unformatted([good, bad]) == [bad]
    assert format_configs.main(["--check", str(good)]) == 0
    assert format_configs.main(["--check", str(bad)]) == 1
    assert format_configs.main([str(bad)]) == 0 and bad.read_text() == expected  # rewritten, same content
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": 1,}')
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        format_configs.formatted(broken.read_text(), broken)


def test_bundle_configs_are_formatted():
    todo = format_configs.unformatted(format_configs.config_files(REPO))
    assert not todo, f"run: python tools/format_configs.py  ({len(todo)} files differ, e.g. {todo[0]})"


def test_ruff_passes():
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -r requirements.txt)")
    proc = subprocess.run([ruff, "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, f"ruff check . failed:\n{proc.stdout[-3000:]}"
