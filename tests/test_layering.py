"""Layering inside every bundle: the phantom (synthetic data) depends on the real-data code, never the reverse.

A reader of real data that imports from ``phantom.py`` breaks when the phantom changes and drags the generator into
inference. The one allowed edge is ``data.prepare_synthetic``, which writes the bundled synthetic set on first use
(``common.synthetic``); benchmarks may use the phantom freely.
"""

from __future__ import annotations

import ast

import pytest

from bundle_harness import BUNDLES

AREAS = sorted(p.parent.parent.name for p in BUNDLES.glob("*/configs/metadata.json"))


def _phantom_imports(path):
    """``(enclosing function or "<module>", line)`` of every import from the bundle's phantom module in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node, where):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else where
            if isinstance(child, ast.ImportFrom) and (child.module in ("scripts.phantom", "phantom")
                                                      or (child.level and child.module == "phantom")):
                found.append((where, child.lineno))
            elif isinstance(child, ast.Import) and any(a.name == "scripts.phantom" for a in child.names):
                found.append((where, child.lineno))
            visit(child, inner)

    visit(tree, "<module>")
    return found


@pytest.mark.parametrize("area", AREAS)
def test_real_data_code_does_not_import_the_phantom(area):
    scripts = BUNDLES / area / "scripts"
    wrong = []
    for path in sorted(scripts.glob("*.py")):
        if path.name.startswith(("phantom", "benchmark")):  # phantom_detection.py is a phantom too
            continue
        for where, line in _phantom_imports(path):
            if not (path.name == "data.py" and where == "prepare_synthetic"):
                wrong.append(f"{path.relative_to(BUNDLES)}:{line} ({where})")
    assert not wrong, f"imports from phantom.py outside data.prepare_synthetic: {wrong}"
