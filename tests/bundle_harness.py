"""Helpers shared by the test modules (imported as ``bundle_harness``; the fixtures are in ``conftest.py``).

Each bundle has a package named ``scripts`` (as in the Model Zoo), so two bundles' ``scripts`` cannot live in one
interpreter at once: ``bundle_module`` swaps them in and out of ``sys.modules``, and whole workflows run in
subprocesses through ``run_bundle``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
BUNDLES = REPO / "bundles"
SHARED = REPO.parent / "shared"
SCHEMA = SHARED / "schemas" / "meta_schema_20240725.json"


def import_bundle_module(area: str, module: str) -> ModuleType:
    """Import ``bundles/<area>/scripts/<module>.py`` as ``scripts.<module>``, evicting another bundle's ``scripts``."""
    root = str(BUNDLES / area)
    loaded = sys.modules.get("scripts")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(root + os.sep):
        for name in [n for n in sys.modules if n == "scripts" or n.startswith("scripts.")]:
            del sys.modules[name]
    sys.path.insert(0, root)
    try:
        return importlib.import_module(f"scripts.{module}")
    finally:
        sys.path.remove(root)


def run_monai_bundle(args: list[str], cwd: str | os.PathLike | None = None, expect_ok: bool = True,
                     timeout: float = 900, env: dict | None = None, prefix: list[str] | None = None):
    """Run ``python -m monai.bundle <args>`` (or ``prefix + args``) in a subprocess from the repository root."""
    command = (prefix or [sys.executable, "-m", "monai.bundle"]) + [str(a) for a in args]
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run(command, cwd=str(cwd or REPO), capture_output=True, text=True, timeout=timeout, env=full_env)
    if expect_ok and proc.returncode != 0:
        pytest.fail(f"command failed ({proc.returncode}): {' '.join(command)}\n--- stdout (tail)\n{proc.stdout[-4000:]}"
                    f"\n--- stderr (tail)\n{proc.stderr[-6000:]}")
    return proc


def config_list(area: str, *names: str) -> str:
    """The ``--config_file`` value merging ``bundles/<area>/configs/<name>.json`` in order."""
    return "[" + ",".join(f"'bundles/{area}/configs/{n}.json'" for n in names) + "]"


def _evict_scripts() -> None:
    for name in [n for n in sys.modules if n == "scripts" or n.startswith("scripts.")]:
        del sys.modules[name]


@contextlib.contextmanager
def bundle_in_process(root: str | os.PathLike) -> Iterator[Path]:
    """Use one bundle folder's configs inside this interpreter: its ``scripts`` first on ``sys.path`` while inside,
    and no bundle's ``scripts`` left in ``sys.modules`` (nor on ``sys.path``) after: the next bundle finds its own."""
    saved = list(sys.path)
    _evict_scripts()
    sys.path.insert(0, str(root))
    try:
        yield Path(root)
    finally:
        sys.path[:] = saved
        _evict_scripts()


def copy_bundle(area: str, dest: str | os.PathLike) -> Path:
    """Copy ``bundles/<area>`` to ``dest`` (a folder that need not share the name) without its git-ignored outputs."""
    outputs = shutil.ignore_patterns("eval", "data", "models", "__pycache__")
    return Path(shutil.copytree(BUNDLES / area, dest, ignore=outputs))


def files_under(folder: str | os.PathLike) -> set[str]:
    """Relative paths of the files under ``folder`` (``__pycache__`` left out)."""
    root = Path(folder)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
