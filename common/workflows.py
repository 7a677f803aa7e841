"""Which workflows a bundle declares, read from the one place that declares them: ``configs/metadata.json``.

Every bundle's ``metadata.json`` holds a ``workflows`` object (an extra key; the bundle schema allows it). Each entry
names the config files that the DESIGN.md commands merge for each step, and the sub-folder of a synthesized data set
that holds inference inputs::

    "workflows": {
        "segmentation": {
            "synthesize": ["synthesize.json"],
            "train": ["train.json"],
            "evaluate": ["train.json", "evaluate.json"],
            "inference": ["inference.json"],
            "inference_input": "test/images"
        }
    }

The main job (``common.main_job``) and the conformance tests run every workflow that a bundle declares, so a new
workflow is added by a new entry here, never by editing a list in code. ``common.tracking.MLflowRunRecorder`` tags each
run with the workflow its config files belong to (:func:`workflow_of_configs`), so that ``common.report`` gives every
workflow its own section. A bundle folder without the key has one
workflow with the four default config files and the data set folder itself as inference input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

STEPS = ("synthesize", "train", "evaluate", "inference")
DEFAULT_CONFIGS = {"synthesize": ("synthesize.json",), "train": ("train.json",),
                   "evaluate": ("train.json", "evaluate.json"), "inference": ("inference.json",)}


@dataclass(frozen=True)
class Workflow:
    """One declared workflow of a bundle.

    Attributes:
        area: the bundle folder's name (``brain``, ``eye``, ...).
        name: the workflow's name in ``metadata.json`` (e.g. ``segmentation``).
        configs: for each of ``STEPS``, the config file names (in ``configs/``) merged in that order.
        inference_input: sub-path of a synthesized data set that holds the inference inputs ("" = the folder itself).
    """

    area: str
    name: str
    configs: dict[str, tuple[str, ...]]
    inference_input: str = ""


def bundle_areas(bundles_dir: Path) -> list[str]:
    """The bundle folders under ``bundles_dir`` (those with ``configs/metadata.json``), sorted by name."""
    if not bundles_dir.is_dir():
        return []
    return sorted(p.name for p in bundles_dir.iterdir() if (p / "configs" / "metadata.json").is_file())


def bundle_workflows(bundle_dir: Path, require_files: bool = True) -> list[Workflow]:
    """The workflows declared in ``<bundle_dir>/configs/metadata.json``, in the order they are written.

    Args:
        bundle_dir: the bundle folder (holds ``configs/metadata.json``).
        require_files: also check that every named config file exists in ``configs/`` (False: names only, e.g. to
            tell which workflow a running config belongs to).

    Raises:
        ValueError: the metadata file is not valid JSON, or its ``workflows`` entry is malformed (the message names
            the file and the entry).
    """
    meta_file = bundle_dir / "configs" / "metadata.json"
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as e:
        raise ValueError(f"{meta_file}: not valid JSON ({e})") from e
    declared = meta.get("workflows", {"default": {}})
    if not isinstance(declared, dict) or not declared:
        raise ValueError(f"{meta_file}: 'workflows' must be a non-empty object of workflow name -> entry")
    workflows = []
    for name, entry in declared.items():
        where = f"{meta_file}: workflow '{name}'"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object")
        configs = {}
        for step in STEPS:
            files = entry.get(step, list(DEFAULT_CONFIGS[step]))
            if isinstance(files, str):
                files = [files]
            if not files or not all(isinstance(f, str) and f.endswith(".json") for f in files):
                raise ValueError(f"{where}: '{step}' must list .json config file names, got {files!r}")
            missing = [f for f in files if require_files and not (bundle_dir / "configs" / f).is_file()]
            if missing:
                raise ValueError(f"{where}: '{step}' names missing config file(s) {missing} in {meta_file.parent}")
            configs[step] = tuple(files)
        unknown = sorted(set(entry) - set(STEPS) - {"inference_input"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(STEPS)}, inference_input")
        inference_input = entry.get("inference_input", "")
        if not isinstance(inference_input, str) or Path(inference_input).is_absolute() or ".." in inference_input:
            raise ValueError(f"{where}: 'inference_input' must be a relative sub-path, got {inference_input!r}")
        workflows.append(Workflow(bundle_dir.name, name, configs, inference_input))
    return workflows


def workflow_of_configs(workflows: list[Workflow], step: str, config_files: list[str]) -> Workflow | None:
    """The declared workflow that a run of ``step`` with ``config_files`` belongs to, or None when that is unclear.

    A workflow matches when all of its ``step`` config files are among ``config_files`` (names, paths or stems:
    ``train_detection.json`` and ``train_detection`` are the same file; extra files such as ``tiny.json`` or
    ``multi_gpu_train.json`` are allowed); of several matches the one naming the most files wins. A bundle's only
    workflow is the answer whatever the files; none or a tie among several workflows gives None.

    Example: breast (``classification``, ``detection``), step ``evaluate``, ``["train_detection", "evaluate_detection",
    "tiny"]`` -> ``detection``; step ``train``, ``["train", "multi_gpu_train"]`` -> ``classification``.

    Raises:
        ValueError: ``step`` is not one of ``STEPS``.
    """
    if step not in STEPS:
        raise ValueError(f"unknown workflow step {step!r}; expected one of {', '.join(STEPS)}")
    if len(workflows) == 1:
        return workflows[0]
    given = {_stem(name) for name in config_files}
    matches = [w for w in workflows if {_stem(f) for f in w.configs[step]} <= given]
    if not matches:
        return None
    most = max(len(w.configs[step]) for w in matches)
    best = [w for w in matches if len(w.configs[step]) == most]
    return best[0] if len(best) == 1 else None


def _stem(name: str) -> str:
    """``train`` for ``train.json``, ``configs/train.yaml`` or ``train``."""
    path = Path(name)
    return path.stem if path.suffix.lower() in (".json", ".yaml", ".yml") else path.name
