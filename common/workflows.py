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
workflow is added by a new entry here, never by editing a list in code. A bundle folder without the key has one
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


def bundle_workflows(bundle_dir: Path) -> list[Workflow]:
    """The workflows declared in ``<bundle_dir>/configs/metadata.json``, in the order they are written.

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
            missing = [f for f in files if not (bundle_dir / "configs" / f).is_file()]
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
