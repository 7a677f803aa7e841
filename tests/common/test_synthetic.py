"""common.synthetic.ensure_synthetic: the default synthetic set is generated once, whole, by one process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from common import synthetic

# each process appends its pid to calls.txt while generating, and sleeps so that the other starts meanwhile
CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from common.synthetic import ensure_synthetic

    root = Path(sys.argv[1])

    def generate(folder):
        with open(root / "calls.txt", "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(1.0)
        for i in range(3):
            (Path(folder) / f"case{i}.txt").write_text(str(i))

    made = ensure_synthetic(root / "synthetic", root / "synthetic", generate)
    print("made" if made else "waited", sorted(p.name for p in (root / "synthetic").iterdir()))
""")


def test_two_processes_generate_once_and_both_see_the_whole_set(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert len((tmp_path / "calls.txt").read_text().split()) == 1  # generated exactly once
    assert sorted(o.split(" ", 1)[0] for o in outs) == ["made", "waited"]
    assert all(o.endswith("['case0.txt', 'case1.txt', 'case2.txt']") for o in outs)  # the waiter saw all 3 files


def test_only_the_default_folder_is_written_and_only_when_empty(tmp_path):
    calls = []

    def generate(folder):
        calls.append(folder)
        open(os.path.join(folder, "case.txt"), "w").close()

    assert not synthetic.ensure_synthetic(tmp_path / "user_data", tmp_path / "default", generate)
    assert not (tmp_path / "user_data").exists() and calls == []
    (tmp_path / "default").mkdir()  # an empty folder counts as missing
    assert synthetic.ensure_synthetic(tmp_path / "default", tmp_path / "default", generate)
    assert not synthetic.ensure_synthetic(tmp_path / "default", tmp_path / "default", generate)
    assert len(calls) == 1 and os.listdir(tmp_path / "default") == ["case.txt"]


def test_a_failed_generation_leaves_nothing_behind(tmp_path):
    def generate(folder):
        open(os.path.join(folder, "half.txt"), "w").close()
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        synthetic.ensure_synthetic(tmp_path / "default", tmp_path / "default", generate)
    assert not (tmp_path / "default").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".default.lock"]  # no temporary folder left
