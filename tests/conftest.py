"""Fixtures shared by every test module; the helpers behind them are in ``bundle_harness.py``.

Each bundle has a package named ``scripts`` (as in the Model Zoo), so two bundles' ``scripts`` cannot live in one
interpreter at once: ``bundle_module`` swaps them in and out of ``sys.modules``, and whole workflows run in
subprocesses through ``run_bundle``.
"""

from __future__ import annotations

import pytest

from bundle_harness import build_tiny_pipeline, import_bundle_module, run_monai_bundle


@pytest.fixture
def bundle_module():
    """``bundle_module(area, module)`` returns that bundle's ``scripts.<module>``."""
    return import_bundle_module


@pytest.fixture
def run_bundle():
    """``run_bundle(args, cwd=None, expect_ok=True, timeout=900, env=None, prefix=None)``; see ``run_monai_bundle``."""
    return run_monai_bundle


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """``tiny_pipeline(area)``: one tiny synthesize -> train -> evaluate -> infer run per bundle, made on first use
    and shared by every test module of the session (see ``bundle_harness.build_tiny_pipeline``; read-only)."""
    made: dict = {}

    def get(area: str) -> dict:
        if area not in made:
            made[area] = build_tiny_pipeline(area, tmp_path_factory.mktemp(f"{area}_pipeline"))
        return made[area]

    return get
