"""Data preparation has one form in every bundle (issue 14): a top-level ``split`` component in ``train.json``
(``scripts.data.training_split``: synthetic set on first use, data check, ``splits.json``) and
``scripts.data.evaluation_cases`` as the data of ``evaluate.json``'s test dataset. MONAI builds a referenced component
lazily, the first time an expression needs it, so ``run`` holds only the workflow calls."""

from __future__ import annotations

import json

import pytest

from bundle_harness import BUNDLES

AREAS = sorted(p.parent.parent.name for p in BUNDLES.glob("*/configs/metadata.json"))


def _targets(node) -> list[str]:
    """Every ``_target_`` in a config tree."""
    if isinstance(node, dict):
        return ([node["_target_"]] if isinstance(node.get("_target_"), str) else []) + [
            t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


@pytest.mark.parametrize("area", AREAS)
def test_one_form_of_data_preparation(area):
    configs = BUNDLES / area / "configs"
    train = json.loads((configs / "train.json").read_text())
    evaluate = json.loads((configs / "evaluate.json").read_text())
    assert train["split"]["_target_"] == "scripts.data.training_split"
    assert train["split"]["synthetic"] == "@synthetic" and train["synthetic"]["synthetic_dir"] == "@synthetic_dir"
    text = json.dumps(train)
    assert "@split['train']" in text and "@split['validation']" in text
    assert _targets(evaluate).count("scripts.data.evaluation_cases") == 1
    for name in ("train", "evaluate", "multi_gpu_train"):
        config = json.loads((configs / f"{name}.json").read_text())
        run = config.get("run", [])
        referenced = [config.get(r[1:]) for r in run if isinstance(r, str) and r.startswith("@")]  # "@id" items
        data_calls = [t for t in _targets(run + referenced) if t.startswith(("scripts.data.", "scripts.phantom."))
                      and "checkpoint" not in t]
        assert data_calls == [], f"{area} {name}.json: data preparation in 'run': {data_calls}"
