"""Fixtures shared by every test module; the helpers behind them are in ``bundle_harness.py``.

Each bundle has a package named ``scripts`` (as in the Model Zoo), so two bundles' ``scripts`` cannot live in one
interpreter at once: ``bundle_module`` swaps them in and out of ``sys.modules``, and whole workflows run in
subprocesses through ``run_bundle``.
"""

from __future__ import annotations

import os
import pickle

# Under pytest-xdist (``-n auto``, the README's test command) every worker and every subprocess it starts gets an
# equal share of the cores: two workers each running a 2-thread torch on 2 cores are slower than one.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402

from bundle_harness import build_tiny_pipeline, declared_workflow, import_bundle_module, run_monai_bundle


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
    """``tiny_pipeline(area, workflow=None)``: one tiny synthesize -> train -> evaluate -> infer run per declared
    workflow of a bundle (``workflow`` None: its first, e.g. ``tiny_pipeline("breast")`` is breast's classification,
    ``tiny_pipeline("breast", "detection")`` its detection), made on first use and shared by every test module of the
    session (see ``bundle_harness.build_tiny_pipeline``; read-only).

    Under pytest-xdist the run is shared by all workers too: the first worker to ask builds it under a file lock in
    the session's common temporary folder and leaves its description beside it; the others wait and read it."""
    made: dict = {}
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # <basetemp>/popen-gw0 -> <basetemp>, common to every worker of this session

    def get(area: str, workflow: str | None = None) -> dict:
        key = f"{area}_{declared_workflow(area, workflow).name}"
        if key not in made:
            description, failed = shared / f"{key}_pipeline.pickle", shared / f"{key}_pipeline.failed"
            with FileLock(str(shared / f"{key}_pipeline.lock")):
                if failed.is_file():  # built once and failed: every later test says why, at no cost
                    pytest.fail(f"the shared tiny {key} pipeline failed earlier in this session:\n"
                                f"{failed.read_text()}", pytrace=False)
                if description.is_file():
                    made[key] = pickle.loads(description.read_bytes())
                else:
                    work = shared / f"{key}_pipeline"
                    work.mkdir()
                    try:
                        made[key] = build_tiny_pipeline(area, work, workflow)
                    except BaseException as e:
                        failed.write_text(str(e)[-8000:] or type(e).__name__)
                        raise
                    description.write_bytes(pickle.dumps(made[key]))
        return made[key]

    return get
