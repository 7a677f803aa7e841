"""Helpers shared by the test modules (imported as ``bundle_harness``; the fixtures are in ``conftest.py``).

Each bundle has a package named ``scripts`` (as in the Model Zoo), so two bundles' ``scripts`` cannot live in one
interpreter at once: ``bundle_module`` swaps them in and out of ``sys.modules``, and whole workflows run in
subprocesses through ``run_bundle``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
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


#: environment variables read when an interpreter or its libraries start: a command that sets one of them to another
#: value than this process has runs in a fresh interpreter, not in a fork of the pre-imported one (fork_runner.py)
_START_UP_ENV = ("PYTHON", "OMP_", "MKL_", "KMP_", "GLIBC_", "LD_", "MALLOC_", "CUDA_", "TORCH", "MONAI")


class _ForkRunner:
    """Client of ``fork_runner.py`` (one server per test process, started on first use, ended with the process)."""

    def __init__(self) -> None:
        self.server: subprocess.Popen | None = None

    def usable(self, env: dict) -> bool:
        if os.environ.get("BUNDLE_TESTS_FORK", "1") == "0" or not hasattr(os, "fork"):
            return False
        return all(env.get(k) == os.environ.get(k) for k in set(env) | set(os.environ)
                   if k.startswith(_START_UP_ENV) and k != "PYTHONWARNINGS") and env.get("PYTHONWARNINGS") == "ignore"

    def _start(self) -> subprocess.Popen:
        if self.server is None or self.server.poll() is not None:
            self.server = subprocess.Popen([sys.executable, str(REPO / "tests" / "fork_runner.py")], cwd=str(REPO),
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
            import atexit

            atexit.register(self.server.kill)
        return self.server

    def run(self, command: list[str], cwd: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
        import json
        import select
        import signal
        import tempfile

        server = self._start()
        with tempfile.TemporaryDirectory(prefix="fork_runner_") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            server.stdin.write(json.dumps({"args": command[3:], "cwd": cwd, "env": env, "stdout": str(out),
                                           "stderr": str(err)}) + "\n")
            server.stdin.flush()
            pid = json.loads(server.stdout.readline())["pid"]
            ready, _, _ = select.select([server.stdout], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)
            status = json.loads(server.stdout.readline())["status"]
            stdout, stderr = (p.read_text(errors="replace") if p.exists() else "" for p in (out, err))
        if not ready:
            raise subprocess.TimeoutExpired(command, timeout, output=stdout, stderr=stderr)
        return subprocess.CompletedProcess(command, status, stdout, stderr)


_FORK_RUNNER = _ForkRunner()


def run_monai_bundle(args: list[str], cwd: str | os.PathLike | None = None, expect_ok: bool = True,
                     timeout: float = 900, env: dict | None = None, prefix: list[str] | None = None):
    """Run ``python -m monai.bundle <args>`` (or ``prefix + args``) from the repository root (or ``cwd``) and return
    its ``subprocess.CompletedProcess``. Plain ``monai.bundle`` commands run in a fork of a pre-imported interpreter
    (``fork_runner.py``: the same command, without its ~5 s of imports) unless ``env`` changes what an interpreter
    reads at start-up; any ``prefix`` (e.g. torchrun) starts a real process."""
    default = [sys.executable, "-m", "monai.bundle"]
    command = (prefix or default) + [str(a) for a in args]
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    if command[:3] == default and _FORK_RUNNER.usable(full_env):
        proc = _FORK_RUNNER.run(command, str(cwd or REPO), full_env, timeout)
    else:
        proc = subprocess.run(command, cwd=str(cwd or REPO), capture_output=True, text=True, timeout=timeout,
                              env=full_env)
    if expect_ok and proc.returncode != 0:
        pytest.fail(f"command failed ({proc.returncode}): {' '.join(command)}\n--- stdout (tail)\n{proc.stdout[-4000:]}"
                    f"\n--- stderr (tail)\n{proc.stderr[-6000:]}")
    return proc


def config_list(area: str, *names: str) -> str:
    """The ``--config_file`` value merging ``bundles/<area>/configs/<name>.json`` in order."""
    return "[" + ",".join(f"'bundles/{area}/configs/{n}.json'" for n in names) + "]"


def inference_parser(area: str, input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                     ckpt_path: str | os.PathLike, **overrides):
    """``<area>``'s ``inference.json`` + ``tiny.json`` parsed for these folders in this interpreter, with the bundle's
    ``scripts`` imported (``import_bundle_module``): ``get_parsed_content("evaluator").run()`` predicts, and
    ``get_parsed_content("handlers")`` are the same handler objects (e.g. the ``CaseWriter`` with its ``rows``)."""
    from monai.bundle import ConfigParser

    import_bundle_module(area, "inference")
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / area / "configs" / f"{n}.json") for n in ("inference", "tiny")])
    parser.update({"bundle_root": str(BUNDLES / area), "input_dir": str(input_dir), "output_dir": str(output_dir),
                   "ckpt_path": str(ckpt_path), **overrides})
    return parser


def inference_evaluator(area: str, input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                        ckpt_path: str | os.PathLike, **overrides):
    """The ``evaluator`` of :func:`inference_parser` (``run()`` predicts)."""
    return inference_parser(area, input_dir, output_dir, ckpt_path, **overrides).get_parsed_content("evaluator")


def inference_network_and_contiguous_copy(area: str, x, work: str | os.PathLike, through_inferer: bool = True):
    """``<area>``'s inference ``network`` (in the config's ``memory_format``), a contiguous copy of it (a fresh
    ``network_def`` with the same seeded weights) and both outputs for ``x``, through the config's ``inferer`` or
    called directly: ``(network, contiguous, ours, reference)``, both networks in eval mode."""
    import torch

    parser = inference_parser(area, work, work, Path(work) / "none" / "model.pt", device="$torch.device('cpu')")
    torch.manual_seed(0)
    network = parser.get_parsed_content("network").eval()
    contiguous = parser.get_parsed_content("network_def", lazy=False).eval()  # a new instance, not converted
    contiguous.load_state_dict(network.state_dict())
    run = parser.get_parsed_content("inferer") if through_inferer else (lambda data, net: net(data))
    with torch.inference_mode():
        return network, contiguous, run(x, network), run(x, contiguous)


def seeded_checkpoint(area: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """Save the seeded, untrained ``network_def`` of ``inference.json`` + ``tiny.json`` to ``path``."""
    import torch
    from monai.bundle import ConfigParser

    if (BUNDLES / area / "scripts" / "networks.py").is_file():
        import_bundle_module(area, "networks")
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / area / "configs" / f"{n}.json") for n in ("inference", "tiny")])
    parser.update({"bundle_root": str(BUNDLES / area), "ckpt_path": str(path)})
    torch.manual_seed(seed)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return Path(path)


def tiny_settings(area: str) -> dict:
    """The bundle's ``configs/tiny.json`` (the tiny sizes every test run merges last)."""
    return json.loads((BUNDLES / area / "configs" / "tiny.json").read_text())


def pipeline_workflows() -> list[tuple[str, str]]:
    """Every ``(area, workflow)`` pair that the bundles' ``metadata.json`` declare (``common.workflows``), bundles by
    name, each bundle's workflows in their declared order (its first is its main one): what the conformance tests
    run end to end, discovered, never listed by hand."""
    from common.workflows import bundle_areas, bundle_workflows

    return [(area, flow.name) for area in bundle_areas(BUNDLES) for flow in bundle_workflows(BUNDLES / area)]


def declared_workflow(area: str, workflow: str | None = None):
    """The ``common.workflows.Workflow`` named ``workflow`` in ``bundles/<area>``'s metadata.json (None: the first).

    Raises:
        ValueError: the bundle declares no workflow of that name (the message lists those it declares).
    """
    from common.workflows import bundle_workflows

    flows = bundle_workflows(BUNDLES / area)
    if workflow is None:
        return flows[0]
    for flow in flows:
        if flow.name == workflow:
            return flow
    raise ValueError(f"{area} declares no workflow {workflow!r} (it declares {[f.name for f in flows]})")


def default_folders(copy: Path, train_configs: tuple[str, ...]) -> dict[str, Path]:
    """The default ``dataset_dir`` and ``output_dir`` of a workflow's training configs in the bundle folder ``copy``
    (``bundle_root`` = ``copy``), e.g. ``data/synthetic`` and ``eval``, or ``data/synthetic_detection`` and
    ``eval/detection`` for breast's detection."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(copy / "configs" / n) for n in train_configs])
    parser["bundle_root"] = str(copy)
    return {key: Path(str(parser.get_parsed_content(key))) for key in ("dataset_dir", "output_dir")}


def build_tiny_pipeline(area: str, work: Path, workflow: str | None = None) -> dict:
    """Synthesize (seed 0), train (1 epoch), evaluate and infer once, for one workflow the bundle declares
    (``common.workflows``; ``workflow`` None: the first), as a Model Zoo user who downloaded the bundle runs it: from
    inside a renamed copy of the bundle folder (``<work>/downloaded_<area>_copy``), relative ``configs/...`` paths,
    the workflow's default ``dataset_dir`` (e.g. ``data/synthetic``) and ``output_dir`` (e.g. ``eval``), ``tiny.json``
    merged last. Inference runs WITHOUT tiny.json into ``pred``: the trained (tiny) network and preprocessing must
    come from ``<output_dir>/models/model.json`` alone (only inference-only knobs that training does not record, e.g.
    a heat-map stride or breast detection's ``score_threshold``, are passed).

    Returns ``{"area", "workflow", "flow", "work", "copy", "data", "out", "pred", "tiny", "repo_files_before",
    "logs": {step: process}}``. Shared by the conformance harness and the bundle's own tests through the session
    fixture ``tiny_pipeline``: treat it as read-only (write elsewhere, with ``--ckpt_path``).
    """
    flow = declared_workflow(area, workflow)
    repo_files_before = files_under(BUNDLES / area)
    copy = copy_bundle(area, work / f"downloaded_{area}_copy")
    folders = default_folders(copy, flow.configs["train"])
    data, out, pred = folders["dataset_dir"], folders["output_dir"], copy / "pred"
    tiny = tiny_settings(area)

    def configs(step: str, with_tiny: bool = True) -> str:
        names = [*flow.configs[step], *(["tiny.json"] if with_tiny else [])]
        return "[" + ",".join(f"'configs/{n}'" for n in names) + "]"

    logs = {"synthesize": run_monai_bundle(["run", "--config_file", configs("synthesize"), "--seed", 0], cwd=copy)}
    logs["train"] = run_monai_bundle(["run", "--config_file", configs("train"), "--epochs", 1], cwd=copy)
    logs["evaluate"] = run_monai_bundle(["run", "--config_file", configs("evaluate")], cwd=copy)
    recorded = json.loads((out / "models" / "model.json").read_text())
    inference_ids = set()
    for name in flow.configs["inference"]:
        inference_ids |= set(json.loads((BUNDLES / area / "configs" / name).read_text()))
    knobs = [arg for key, value in tiny.items() if key in inference_ids and key not in recorded
             for arg in (f"--{key}", json.dumps(value))]
    input_dir = data.relative_to(copy).as_posix() + (f"/{flow.inference_input}" if flow.inference_input else "")
    logs["inference"] = run_monai_bundle(["run", "--config_file", configs("inference", with_tiny=False),
                                          "--input_dir", input_dir, "--output_dir", "pred",
                                          "--ckpt_path", (out / "models" / "model.pt").relative_to(copy).as_posix(),
                                          *knobs], cwd=copy)
    return {"area": area, "workflow": flow.name, "flow": flow, "work": work, "copy": copy, "data": data, "out": out,
            "pred": pred, "tiny": tiny, "repo_files_before": repo_files_before, "logs": logs}


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
