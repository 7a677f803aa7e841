"""Helpers shared by the test modules (imported as ``bundle_harness``; the fixtures are in ``conftest.py``).

Each bundle has a package named ``scripts`` (as in the Model Zoo), so two bundles' ``scripts`` cannot live in one
interpreter at once: ``bundle_module`` swaps them in and out of ``sys.modules``, and whole workflows run in
subprocesses through ``run_bundle``.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
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


def tiny_settings(area: str) -> dict:
    """The bundle's ``configs/tiny.json`` (the tiny sizes every test run merges last)."""
    return json.loads((BUNDLES / area / "configs" / "tiny.json").read_text())


def build_tiny_pipeline(area: str, work: Path) -> dict:
    """Synthesize (seed 0), train (1 epoch), evaluate and infer once, with the DESIGN.md commands and ``tiny.json``
    merged last (inference: without it, the training settings come from ``models/model.json``), for the bundle's
    first declared workflow (``common.workflows``).

    Returns ``{"area", "work", "data", "out", "pred", "tiny", "logs": {step: CompletedProcess}}``: ``out`` holds the
    trained model and the evaluation (``metrics.json``), ``pred`` the inference outputs. Shared by the conformance
    harness and the bundle's own tests through the session fixture ``tiny_pipeline``: treat it as read-only (write
    elsewhere, with ``--ckpt_path``).
    """
    from common.workflows import bundle_workflows

    flow = bundle_workflows(BUNDLES / area)[0]
    data, out, pred = work / "data", work / "out", work / "pred"
    tiny = tiny_settings(area)

    def configs(step: str) -> str:
        return config_list(area, *[name.removesuffix(".json") for name in flow.configs[step]], "tiny")

    logs = {"synthesize": run_monai_bundle(["run", "--config_file", configs("synthesize"), "--dataset_dir", data,
                                            "--seed", 0])}
    logs["train"] = run_monai_bundle(["run", "--config_file", configs("train"), "--dataset_dir", data,
                                      "--output_dir", out, "--epochs", 1])
    logs["evaluate"] = run_monai_bundle(["run", "--config_file", configs("evaluate"), "--dataset_dir", data,
                                         "--output_dir", out])
    input_dir = data / flow.inference_input if flow.inference_input else data
    # inference WITHOUT tiny.json: the trained (tiny) network and preprocessing must come from models/model.json
    # alone; only inference-only knobs that training does not record (e.g. a heat-map stride) are passed
    recorded = json.loads((out / "models" / "model.json").read_text())
    inference_ids = set()
    for name in flow.configs["inference"]:
        inference_ids |= set(json.loads((BUNDLES / area / "configs" / name).read_text()))
    knobs = [arg for key, value in tiny.items() if key in inference_ids and key not in recorded
             for arg in (f"--{key}", json.dumps(value))]
    logs["inference"] = run_monai_bundle(["run", "--config_file", config_list(area, *[
        name.removesuffix(".json") for name in flow.configs["inference"]]), "--input_dir", input_dir,
        "--output_dir", pred, "--ckpt_path", out / "models" / "model.pt", *knobs])
    return {"area": area, "work": work, "data": data, "out": out, "pred": pred, "tiny": tiny, "logs": logs}
