"""Conformance harness: every folder in ``bundles/`` keeps the contract of DESIGN.md, end to end.

For each bundle, in subprocesses (each bundle's ``scripts`` package needs its own interpreter), from a renamed copy of
the bundle folder outside the repository, with relative paths, as a Model Zoo user who downloaded one bundle runs it:
synthesize → train (1 epoch, tiny) → evaluate → inference, for every workflow the bundle's ``metadata.json`` declares
(``common.workflows``; e.g. breast's classification and detection), with ``configs/tiny.json`` merged last
(inference: without it, the training settings come from ``models/model.json``) and the data and outputs at the
workflow's defaults under ``bundle_root``; every output must land inside the copy. That run is made once per workflow
and shared with the bundle's own tests (``tiny_pipeline`` in conftest.py). Then the outputs are checked for their
documented form, MONAI's train and inference property checks are run on the copy, and a 2-process torchrun training
is run, per workflow; per bundle, ``verify_net_in_out`` is run, the declared network output (channels, value range) is
compared with a forward pass, and the TorchScript export command printed in the model card is run as printed from the
repository root and from the copy, its output compared with the eager network's. New bundle folders and new declared
workflows are picked up without edits.
"""

from __future__ import annotations

import csv
import enum
import json
import math
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

from bundle_harness import (
    BUNDLES,
    REPO,
    SCHEMA,
    bundle_in_process,
    files_under,
    import_bundle_module,
    pipeline_workflows,
    run_monai_bundle,
    tiny_settings,
)

AREAS = (sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file())
         if BUNDLES.is_dir() else [])
#: every (area, workflow) pair the bundles declare in metadata.json: what the end-to-end tests run
WORKFLOWS = pipeline_workflows()
WORKFLOW_IDS = [f"{area}-{workflow}" for area, workflow in WORKFLOWS]
CONTRACT_FILES = ("metadata.json", "train.json", "evaluate.json", "inference.json", "multi_gpu_train.json",
                  "synthesize.json", "logging.conf", "tiny.json")

pytestmark = pytest.mark.skipif(not AREAS, reason="no bundle in bundles/ yet")


@pytest.fixture(scope="module", params=WORKFLOWS, ids=WORKFLOW_IDS)
def pipeline(request, tiny_pipeline):
    """Synthesize, train, evaluate and infer once per declared workflow of each bundle inside a renamed copy of the
    bundle folder outside the repository, with relative paths and the workflow's default ``dataset_dir``/``output_dir``
    (shared with the bundle's tests)."""
    return tiny_pipeline(*request.param)


@pytest.fixture(scope="module", params=AREAS)
def main_pipeline(request, tiny_pipeline):
    """The shared run of each bundle's first (main) workflow, for what a bundle has once whatever its workflows: the
    network ``metadata.json`` describes and the model card's export command."""
    return tiny_pipeline(request.param)


@pytest.mark.parametrize("area", AREAS)
def test_contract_files_present(area):
    configs = BUNDLES / area / "configs"
    missing = [f for f in CONTRACT_FILES if not (configs / f).is_file()]
    assert not missing, f"{area}: missing configs {missing}"
    for name in ("docs/README.md", "docs/data_license.txt", "LICENSE", "scripts/__init__.py"):
        assert (BUNDLES / area / name).is_file(), f"{area}: missing {name}"


# recorded in model.json for provenance; evaluate and inference do not use them (issue 16; `workflow`: which declared
# workflow trained the model, e.g. breast's "detection")
TRAINING_ONLY = {"pretrained_ckpt", "freeze", "pretrained_lr_scale", "workflow"}
# records in model.json that are not setting ids: cardiac's `conformal` (common.uncertainty.require_conformal's
# result) and brain's `postprocessing_fit` (the validation Dice before and after its fitted post-processing)
RECORDS = {"conformal", "postprocessing_fit"}
MERGES = (("train",), ("train", "evaluate"), ("train", "multi_gpu_train"), ("inference",), ("synthesize",),
          ("train", "tiny"), ("train", "evaluate", "tiny"), ("train", "multi_gpu_train", "tiny"), ("inference", "tiny"),
          ("synthesize", "tiny"))


@pytest.mark.parametrize("area", AREAS)
def test_every_config_parses(area):
    """Each workflow's config files read and merge as the commands of DESIGN.md merge them (overlays over train)."""
    from monai.bundle import ConfigParser

    for names in MERGES:
        parser = ConfigParser()
        parser.read_config([str(BUNDLES / area / "configs" / f"{n}.json") for n in names])
        assert "run" in parser, f"{area}: {'+'.join(names)} has no 'run'"
    tiny = tiny_settings(area)
    assert isinstance(tiny.get("harness_input_shape"), list), "tiny.json needs harness_input_shape"
    assert all(not k.count("#") and not k.count("::") for k in tiny), "tiny.json must hold top-level ids only"


@pytest.mark.parametrize("area", AREAS)
def test_every_declared_workflow_parses(area):
    """Every workflow ``metadata.json`` declares (``common.workflows``; e.g. breast's detection besides its
    classification), not only the first that the end-to-end run covers: each step's config files read and merge in the
    declared order, alone and with tiny.json, and define ``run``; a training config's overlay for torchrun
    (``multi_gpu_<train config>``), where the bundle ships one, merges over it."""
    from monai.bundle import ConfigParser

    from common.workflows import bundle_workflows

    for flow in bundle_workflows(BUNDLES / area):
        for step, names in flow.configs.items():
            for extra in ((), ("tiny.json",)):
                parser = ConfigParser()
                parser.read_config([str(BUNDLES / area / "configs" / n) for n in (*names, *extra)])
                assert "run" in parser, f"{area} {flow.name}: {step} ({'+'.join(names + extra)}) has no 'run'"
        multi = BUNDLES / area / "configs" / f"multi_gpu_{flow.configs['train'][-1]}"
        if multi.is_file():
            parser = ConfigParser()
            parser.read_config([str(BUNDLES / area / "configs" / n) for n in flow.configs["train"]] + [str(multi)])
            assert "run" in parser and parser["finalize"], f"{area} {flow.name}: {multi.name} has no process-group end"


@pytest.mark.parametrize("area", AREAS)
def test_metadata_valid_offline(area):
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.is_file():
        pytest.skip(f"official bundle schema not found at {SCHEMA}: metadata NOT validated")
    meta = json.loads((BUNDLES / area / "configs" / "metadata.json").read_text())
    jsonschema.validate(meta, json.loads(SCHEMA.read_text()))
    assert meta["version"] in meta["changelog"], "the current version needs a changelog line"
    assert "image" in meta["network_data_format"]["inputs"]


@pytest.mark.parametrize("area", AREAS)
def test_network_defined_identically_in_train_evaluate_and_inference(area, tmp_path):
    """train.json, train+evaluate.json and inference.json build the same network (class, layers, parameter shapes)
    from their defaults (a checkpoint path with no training settings beside it)."""
    from monai.bundle import ConfigParser

    if (BUNDLES / area / "scripts" / "networks.py").is_file():
        import_bundle_module(area, "networks")  # the parser resolves "scripts.networks.X" from sys.modules
    built = {}
    for names in (("train",), ("train", "evaluate"), ("inference",)):
        parser = ConfigParser()
        parser.read_config([str(BUNDLES / area / "configs" / f"{n}.json") for n in names])
        parser["ckpt_path"] = str(tmp_path / "elsewhere" / "model.pt")
        net = parser.get_parsed_content("network_def")
        built["+".join(names)] = (type(net).__name__, {k: tuple(v.shape) for k, v in net.state_dict().items()})
    first = built["train"]
    assert first[1], f"{area}: network_def has no parameters"
    for names, net in built.items():
        assert net == first, f"{area}: {names} builds another network than train.json"


@pytest.mark.parametrize("area", AREAS)
def test_metadata_declares_common_and_measured_metrics(area):
    """Issue 19: the shared library is a declared dependency with the collection's version; ``eval_metrics`` hold
    numbers (measured, on synthetic data whose description is in ``eval_metrics_data``), not descriptions."""
    meta = json.loads((BUNDLES / area / "configs" / "metadata.json").read_text())
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    assert meta["required_packages_version"].get("monai-bundle-collection") == version
    metrics = meta.get("eval_metrics", {})
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()), metrics
    if metrics:
        assert all(k.startswith("synthetic_") for k in metrics), "say in the key that the number is not real data"
        assert "synthetic" in meta.get("eval_metrics_data", ""), "name the data the metrics were measured on"


REAL_DATA_AREAS = [a for a in AREAS if (BUNDLES / a / "configs" / "real_data.json").is_file()]
# ids a real_data.json may change that evaluate/inference define for themselves and training does not record: they
# steer how inference runs, not what the network was trained on (the model card prints them on the inference command)
INFERENCE_KNOBS = {"sw_batch_size", "sw_overlap", "batch_size", "num_workers"}


def _real_data(area: str) -> dict:
    return json.loads((BUNDLES / area / "configs" / "real_data.json").read_text())


def _saved_settings(area: str) -> dict:
    """The ``settings`` of the ``BestModelSaver`` in train.json (what training writes to ``models/model.json``)."""
    train = json.loads((BUNDLES / area / "configs" / "train.json").read_text())
    savers = [h for h in train["validate"]["handlers"] if h.get("_target_", "").endswith("BestModelSaver")]
    assert len(savers) == 1, f"{area}: train.json needs exactly one BestModelSaver in validate#handlers"
    return savers[0].get("settings", {})


def test_every_bundle_has_a_real_data_recipe():
    """Issue 17: every bundle ships ``configs/real_data.json`` (the published-class recipe at the real size)."""
    assert sorted(REAL_DATA_AREAS) == sorted(AREAS)


@pytest.mark.parametrize("area", REAL_DATA_AREAS)
def test_real_data_sets_only_ids_train_defines(area):
    """Every id ``real_data.json`` sets (``a#b`` paths included) exists in ``train.json``: MONAI silently adds a
    misspelt id, which would leave the demo value in force while the model card claims the published one."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / area / "configs" / "train.json"))
    unknown = sorted(k for k in _real_data(area) if k not in parser)
    assert not unknown, f"{area}: real_data.json sets ids train.json does not define: {unknown}"


@pytest.mark.parametrize("area", REAL_DATA_AREAS)
def test_real_data_changes_reach_evaluate_and_inference(area):
    """A value of ``real_data.json`` that evaluate/inference also use (grid, patch, network width/depth...) is
    recorded by training in ``models/model.json`` and read back there with ``model_setting`` (DESIGN.md, training
    settings beside the model), unless it only steers how inference runs (:data:`INFERENCE_KNOBS`)."""
    settings = _saved_settings(area)
    for name in ("evaluate", "inference"):
        config = json.loads((BUNDLES / area / "configs" / f"{name}.json").read_text())
        for key in (k for k in _real_data(area) if "#" not in k and k in config and k not in INFERENCE_KNOBS):
            assert key in settings, f"{area}: real_data.json changes {key!r}, which {name}.json uses, but training " \
                                    f"does not record it in model.json (BestModelSaver settings)"
            assert f"model_setting(@ckpt_path, '{key}'" in str(config[key]), \
                f"{area}: {name}.json does not read {key!r} from model.json"


@pytest.mark.parametrize("area", REAL_DATA_AREAS)
def test_real_data_parses_and_instantiates(area, tmp_path):
    """train.json + real_data.json merge, and the network, the transforms and the data sets instantiate (on empty
    data lists: no data, no training); the real recipe's network is the larger one and AMP is on exactly when CUDA
    is there."""
    from monai.bundle import ConfigParser

    def parser_for(*names: str) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config([str(BUNDLES / area / "configs" / f"{n}.json") for n in names])
        parser["dataset_dir"], parser["output_dir"] = str(tmp_path / "data"), str(tmp_path / "out")
        return parser

    with bundle_in_process(BUNDLES / area):
        demo, real = parser_for("train"), parser_for("train", "real_data")
        sizes = {}
        for label, parser in (("demo", demo), ("real", real)):
            net = parser.get_parsed_content("network_def")
            sizes[label] = sum(p.numel() for p in net.parameters())
        for part in ("train", "validate"):
            real[f"{part}#dataset#data"] = []
            assert callable(real.get_parsed_content(f"{part}#preprocessing"))
            dataset = real.get_parsed_content(f"{part}#dataset")
            assert len(dataset) == 0, f"{area}: {part}#dataset did not take the empty data list"
        amp = (real.get_parsed_content("train#trainer#amp"), real.get_parsed_content("validate#evaluator#amp"))
    assert sizes["real"] > sizes["demo"], f"{area}: the real recipe's network is not larger than the demo's: {sizes}"
    assert amp == (torch.cuda.is_available(),) * 2, f"{area}: AMP must be on exactly when CUDA is available"


def test_train_properties_and_outputs(pipeline, tmp_path):
    """MONAI's own property check of the train workflow (``ConfigWorkflow(..., workflow_type="train")``, initialised,
    every required property resolved and every optional one under its canonical id), on the copy the pipeline ran,
    with its data; the bundle's ``scripts`` made importable as ``run`` would."""
    from monai.bundle import ConfigWorkflow

    copy, flow = pipeline["copy"], pipeline["flow"]
    model = pipeline["out"] / "models" / "model.pt"
    assert model.is_file() and model.stat().st_size > 0, "train wrote no models/model.pt"
    with bundle_in_process(copy):
        configs = [str(copy / "configs" / n) for n in (*flow.configs["train"], "tiny.json")]
        workflow = ConfigWorkflow(config_file=configs, meta_file=str(copy / "configs" / "metadata.json"),
                                  logging_file=False, workflow_type="train", bundle_root=str(copy),
                                  output_dir=str(tmp_path))
        workflow.initialize()
        missing = workflow.check_properties()
    assert missing == [], f"{flow.configs['train']} fail MONAI's train property check: {missing}"


def test_missing_checkpoint_is_refused_before_any_output(pipeline, tmp_path):
    """Evaluate and inference with a ``--ckpt_path`` that does not exist, run as ``monai.bundle run`` runs them
    (``ConfigWorkflow``: initialize, run), in this interpreter: the root cause (``common.errors.describe``, what the
    last line of a real run shows; the excepthook itself is pinned in tests/test_workflow_endings.py) names the
    checkpoint and says it does not exist, and neither run writes its outputs (metrics.json, predictions)."""
    from monai.bundle import ConfigWorkflow

    from common.errors import describe

    copy, flow = pipeline["copy"], pipeline["flow"]
    missing = tmp_path / "never_trained" / "model.pt"
    runs = {"evaluate": {"dataset_dir": str(pipeline["data"]), "output_dir": str(tmp_path / "evaluate")},
            "inference": {"input_dir": str(pipeline["data"] / flow.inference_input) if flow.inference_input
                          else str(pipeline["data"]), "output_dir": str(tmp_path / "inference")}}
    for step, overrides in runs.items():
        with bundle_in_process(copy):
            configs = [str(copy / "configs" / n) for n in (*flow.configs[step], "tiny.json")]
            with pytest.raises(Exception) as info:
                workflow = ConfigWorkflow(config_file=configs, meta_file=str(copy / "configs" / "metadata.json"),
                                          logging_file=False, workflow_type=None, bundle_root=str(copy),
                                          ckpt_path=str(missing), **overrides)
                workflow.initialize()
                workflow.run()
        reason = describe(info.value)
        assert str(missing) in reason and "does not exist" in reason, f"{flow.configs[step]}: {reason}"
        out = Path(overrides["output_dir"])
        written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.exists() else []
        assert not [f for f in written if f.endswith((".json", ".csv")) or f.startswith("predictions")], \
            f"{flow.configs[step]} wrote {written} without a checkpoint"


#: bundles whose inference.json is not yet the evaluator form (issue 19 item 2): their checks are strict xfails
INFERENCE_NOT_CONVERTED: set[str] = set()
#: ids of the one inference entry (docs/bundle-conventions.md), beside MONAI's required inference properties
INFERENCE_IDS = ("input_dir", "dataset_dir", "dataset", "dataloader", "preprocessing", "inferer", "postprocessing",
                 "handlers", "evaluator", "backend", "network_def", "network")


def _not_converted(area: str, request) -> None:
    if area in INFERENCE_NOT_CONVERTED:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{area}: inference.json still runs a function, "
                                              "not a MONAI evaluator over a dataset (issue 19 item 2)"))


@pytest.mark.parametrize(("area", "workflow"), WORKFLOWS, ids=WORKFLOW_IDS)
def test_inference_entry_is_one_form(area, workflow, request):
    """Issue 14 (row "inference entry"), 19 and 20: the inference config of every declared workflow is the Model
    Zoo's form: a ``dataset`` over the inputs listed from ``--input_dir`` (``common.inference.InputCases`` over
    ``scripts.inference.list_inputs``) with the workflow's ``preprocessing``, a ``dataloader`` of one case per
    iteration (or, where the items are an input's same-sized patches, ``InputCases(grouped=True)`` batched by
    ``batch_size`` through ``common.inference.collate_cases``, with the ``CaseWriter``'s ``finish_input``), the
    ``evaluator`` (``common.inference.InferenceEvaluator``) with ``inferer``, ``postprocessing`` and ``handlers`` (the
    per-case ``common.inference.CaseWriter``), and ``run`` is ``$@evaluator.run()``; ``dataset_dir`` is
    ``input_dir``. The main workflow's network runs through the ``backend`` id; a further workflow whose network
    returns no tensor to export (breast detection: box lists per image) has no ``backend`` and runs it eagerly."""
    from common.workflows import bundle_workflows

    _not_converted(area, request)
    flows = bundle_workflows(BUNDLES / area)
    flow = next(f for f in flows if f.name == workflow)
    config = {}
    for name in flow.configs["inference"]:
        config.update(json.loads((BUNDLES / area / "configs" / name).read_text()))
    exportable = "backend" in config
    assert exportable or flow != flows[0], f"{area}: the main workflow's inference needs the backend id"
    missing = [k for k in INFERENCE_IDS if k not in config and (exportable or k != "backend")]
    assert not missing, f"{area} {workflow}: {flow.configs['inference']} lack {missing}"
    assert config["run"] == ["$@evaluator.run()"] and not config.get("initialize") and not config.get("finalize")
    assert config["dataset_dir"] == "@input_dir"
    dataset, evaluator = config["dataset"], config["evaluator"]
    assert dataset["_target_"] == "common.inference.InputCases" and dataset["transform"] == "@preprocessing"
    assert dataset["data"]["_target_"] == "scripts.inference.list_inputs"
    assert dataset["data"]["input_dir"] == "$str(@input_dir)"
    loader = config["dataloader"]
    assert loader["dataset"] == "@dataset"
    if dataset.get("grouped"):
        assert loader["batch_size"] == "@batch_size" and loader["collate_fn"] == "$common.inference.collate_cases"
        assert all("finish_input" in h for h in config["handlers"] if h["_target_"] == "common.inference.CaseWriter")
    else:
        assert loader["batch_size"] == 1
    assert evaluator["_target_"] == "common.inference.InferenceEvaluator"
    assert {k: evaluator.get(k) for k in ("val_data_loader", "network", "inferer", "postprocessing", "val_handlers",
                                          "ckpt_path")} == {
        "val_data_loader": "@dataloader", "network": "@network", "inferer": "@inferer",
        "postprocessing": "@postprocessing", "val_handlers": "@handlers", "ckpt_path": "$str(@ckpt_path)"}
    exported = "$common.backends.with_backend(@network_def.to(@device, memory_format=@memory_format), @backend)"
    assert config["network"] == (exported if exportable else "$@network_def.to(@device)")
    assert [h["_target_"] for h in config["handlers"]].count("common.inference.CaseWriter") == 1


def test_inference_properties(pipeline, request):
    """MONAI's own property check of the inference workflow (``workflow_type="infer"``) on the copied bundle: every
    required property resolves (the dataset lists the copy's default input folder, the evaluator loads the model)
    and every optional one is under its canonical id."""
    from monai.bundle import ConfigWorkflow
    from monai.bundle.properties import InferProperties
    from monai.utils import BundleProperty, BundlePropertyConfig

    _not_converted(pipeline["area"], request)
    copy, flow = pipeline["copy"], pipeline["flow"]
    with bundle_in_process(copy):
        configs = [str(copy / "configs" / n) for n in (*flow.configs["inference"], "tiny.json")]
        workflow = ConfigWorkflow(config_file=configs, meta_file=str(copy / "configs" / "metadata.json"),
                                  logging_file=False, workflow_type="infer", bundle_root=str(copy),
                                  ckpt_path=str(pipeline["out"] / "models" / "model.pt"))
        absent = [name for name, prop in InferProperties.items()
                  if prop.get(BundleProperty.REQUIRED) and prop[BundlePropertyConfig.ID] not in workflow.parser]
        assert not absent, f"{flow.configs['inference']} lack MONAI's required inference properties {absent}"
        workflow.initialize()
        missing = workflow.check_properties()
    assert missing == [], f"{flow.configs['inference']} fail MONAI's infer property check: {missing}"


def test_training_settings_beside_the_model_reach_evaluate_and_inference(pipeline):
    """Training writes ``models/model.json`` beside ``model.pt``; evaluate and inference parsed WITHOUT tiny.json and
    given only ``ckpt_path`` resolve every recorded id to the trained (tiny) value; the command line still wins."""
    from monai.bundle import ConfigParser

    area, model = pipeline["area"], pipeline["out"] / "models" / "model.pt"
    settings = json.loads(model.with_suffix(".json").read_text())
    tiny = pipeline["tiny"]
    assert settings and any(k in tiny for k in settings), f"{area}: model.json records none of tiny.json's ids"
    for names in (pipeline["flow"].configs["inference"], pipeline["flow"].configs["evaluate"]):
        parser = ConfigParser()
        parser.read_config([str(BUNDLES / area / "configs" / n) for n in names])
        parser["ckpt_path"] = str(model)
        for key, value in settings.items():
            if key in TRAINING_ONLY | RECORDS:
                continue
            assert parser.get_parsed_content(key) == value, f"{area} {'+'.join(names)}: {key} != recorded {value!r}"
        key = next(k for k in settings if k not in TRAINING_ONLY | RECORDS)
        parser = ConfigParser()
        parser.read_config([str(BUNDLES / area / "configs" / n) for n in names])
        parser.update({"ckpt_path": str(model), key: "from the command line"})
        assert parser.get_parsed_content(key) == "from the command line"


@pytest.mark.parametrize("area", AREAS)
def test_transfer_ids_and_encoder_preset(area, tmp_path):
    """Issue 16, config level (no training): train.json has ``pretrained_ckpt`` (null), ``freeze`` ([]) and
    ``pretrained_lr_scale`` (1.0), records them in model.json and MLflow params, builds the optimiser from
    ``common.transfer.param_groups``; ``--freeze encoder`` freezes some but not all parameters of the (tiny) network;
    multi_gpu_train.json wraps the prepared network; the network's own weights load back completely as a
    pretrained checkpoint."""
    import torch
    from monai.bundle import ConfigParser

    import_bundle_module(area, "networks")  # the parser resolves "scripts.networks" from sys.modules
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / area / "configs" / f"{n}.json") for n in ("train", "tiny")])
    assert [parser[k] for k in ("pretrained_ckpt", "freeze", "pretrained_lr_scale")] == [None, [], 1.0]
    train = json.loads((BUNDLES / area / "configs" / "train.json").read_text())

    def components(node):  # every dict with a _target_ anywhere in the config
        if isinstance(node, dict):
            if "_target_" in node:
                yield node
            for value in node.values():
                yield from components(value)
        elif isinstance(node, list):
            for value in node:
                yield from components(value)

    by_target = {}
    for component in components(train):
        by_target.setdefault(component["_target_"], []).append(component)
    (saver,) = by_target["common.checkpoint.BestModelSaver"]
    assert {k: saver["settings"].get(k) for k in ("pretrained_ckpt", "freeze", "pretrained_lr_scale")} == {
        "pretrained_ckpt": "@pretrained_ckpt", "freeze": "@freeze", "pretrained_lr_scale": "@pretrained_lr_scale"}, \
        f"{area}: model.json must record the transfer ids"
    (recorder,) = by_target["common.tracking.MLflowRunRecorder"]
    assert recorder["params"].get("transfer") == "$common.transfer.summary(@network)", f"{area}: MLflow params"
    assert train["optimizer"]["params"] == "$common.transfer.param_groups(@network, @learning_rate, " \
        "@pretrained_lr_scale)", f"{area}: the optimiser must take common.transfer's parameter groups"
    multi = ConfigParser()
    multi.read_config([str(BUNDLES / area / "configs" / f"{n}.json") for n in ("train", "multi_gpu_train")])
    assert "@network_init.to(@device)" in json.dumps(multi["network"]), f"{area}: DDP must wrap network_init"

    for overlay in ("evaluate", "multi_gpu_train"):  # they replace train.json's imports: network_init must resolve
        merged = ConfigParser()
        merged.read_config([str(BUNDLES / area / "configs" / f"{n}.json") for n in ("train", overlay, "tiny")])
        assert merged.get_parsed_content("network_init").transfer_report.loaded == []

    parser["freeze"] = "encoder"
    net = parser.get_parsed_content("network_init")
    frozen = net.transfer_report.frozen
    names = [n for n, _ in net.named_parameters()]
    assert 0 < len(frozen) < len(names), f"{area}: the encoder preset froze {len(frozen)} of {len(names)}"
    assert not any(n.startswith(("head", "conv_final", "up_layers")) for n in frozen), f"{area}: head frozen"
    groups = parser.get_parsed_content("optimizer").param_groups
    assert sum(len(g["params"]) for g in groups) == len(names) - len(frozen)

    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    again = ConfigParser()
    again.read_config([str(BUNDLES / area / "configs" / f"{n}.json") for n in ("train", "tiny")])
    again.update({"pretrained_ckpt": str(ckpt), "pretrained_lr_scale": 0.1})
    loaded = again.get_parsed_content("network_init")
    assert loaded.transfer_report.skipped == {} and len(loaded.transfer_report.loaded) == len(net.state_dict())
    assert [g["lr"] for g in again.get_parsed_content("optimizer").param_groups] == [
        pytest.approx(0.1 * again.get_parsed_content("learning_rate"))]


def test_evaluate_outputs(pipeline):
    metrics = json.loads((pipeline["out"] / "metrics.json").read_text())
    key = metrics["key_metric"]
    assert key in metrics and "num_cases" in metrics and metrics["num_cases"] >= 1
    for name, value in metrics.items():
        if name.endswith("_ci95") and value is not None:
            point = metrics[name[: -len("_ci95")]]
            assert len(value) == 2 and value[0] <= point <= value[1], f"{name}={value} does not contain {point}"
        if isinstance(value, float):
            assert math.isfinite(value), f"{name} is not finite"
    assert metrics[key] is not None and f"{key}_ci95" in metrics
    with open(pipeline["out"] / "metrics_per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["num_cases"]


def test_inference_outputs(pipeline):
    pred = pipeline["pred"]
    files = list((pred / "predictions").glob("*")) if (pred / "predictions").is_dir() else []
    tables = [p for p in (pred / "predictions.csv", pred / "clinical.csv", pred / "detections.csv") if p.is_file()]
    assert files or tables, f"inference wrote nothing under {pred}"
    assert not [p for p in pred.rglob(".*.tmp*")], "temporary files left behind"


def test_torchrun_two_processes_leave_a_model_one_process_loads(pipeline, tmp_path):
    """The workflow's torchrun overlay (``multi_gpu_<train config>``: ``multi_gpu_train.json``,
    ``multi_gpu_train_detection.json``) over its training configs under ``torchrun`` with 2 processes (gloo on CPU),
    from inside the copy, on the shared tiny data set; where the training config has issue 16's transfer ids,
    fine-tuning the shared tiny model with the ``encoder`` preset frozen (those ids under DDP): one validation after
    the last epoch whatever ``val_interval`` is, one ``model.pt`` without DDP's ``module.`` prefix that the
    single-process inference network loads strictly, the training settings beside it; a validation split smaller
    than the number of processes is said, not a hang."""
    area, copy, flow = pipeline["area"], pipeline["copy"], pipeline["flow"]
    names = [*flow.configs["train"], f"multi_gpu_{flow.configs['train'][-1]}", "tiny.json"]
    out = tmp_path / "ddp"
    ids = set().union(*(json.loads((copy / "configs" / n).read_text()) for n in flow.configs["train"]))
    fewer = ["--val_fraction", 0.25] if "val_fraction" in ids else []  # 4 tiny cases: 1 validation case, 2 ranks
    pretrained = pipeline["out"] / "models" / "model.pt"  # issue 16: fine-tuning with a frozen encoder, under DDP
    transfer = ["--pretrained_ckpt", pretrained, "--freeze", "encoder"] if "pretrained_ckpt" in ids else []
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                "monai.bundle"]  # --standalone: a free port, so parallel test workers never collide
    proc = run_monai_bundle(["run", "--config_file", "[" + ",".join(f"'configs/{n}'" for n in names) + "]",
                             "--dataset_dir", pipeline["data"].relative_to(copy).as_posix(), "--output_dir", out,
                             "--epochs", 1, "--val_interval", 2, *fewer, *transfer],
                            cwd=copy, prefix=torchrun, env={"OMP_NUM_THREADS": "1"})
    models = out / "models"
    assert {"model.pt", "model.json"} <= {p.name for p in models.iterdir()}, sorted(models.iterdir())
    recorded = json.loads((models / "model.json").read_text())
    single = json.loads((pipeline["out"] / "models" / "model.json").read_text())
    assert set(single) <= set(recorded), f"{area}: rank 0 recorded less than one process: {set(single) - set(recorded)}"
    if transfer:
        assert recorded["pretrained_ckpt"] == str(pretrained) and recorded["freeze"] in ("encoder", ["encoder"]), \
            recorded
    state = torch.load(models / "model.pt", map_location="cpu")
    assert not [k for k in state if k.startswith("module.")], f"{area}: DDP's module. prefix saved"
    with bundle_in_process(copy):
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config([str(copy / "configs" / n) for n in flow.configs["inference"]])
        parser["bundle_root"], parser["ckpt_path"] = str(copy), str(models / "model.pt")
        parser.get_parsed_content("network_def").load_state_dict(state)  # strict: the recorded settings suffice
    split = json.loads((out / "splits.json").read_text()) if (out / "splits.json").is_file() else {}
    validation = split.get("validation") or split.get("val") or []
    # MONAI's DistributedSampler stopped here once (issue 13 kind 7); cardiac's one patient is two items (ED, ES)
    if len(validation) == 1 and area != "cardiac":
        assert "validation split has 1 case(s) for 2 processes" in proc.stdout + proc.stderr, area


def test_copied_bundle_runs_and_writes_only_inside_itself(pipeline):
    """Issue 19: a bundle folder copied anywhere runs from inside with relative paths, and ``bundle_root`` is that
    folder: the synthetic data, the model, the metrics and the predictions are in the copy, nothing in the
    repository's bundle folder, nothing beside the copy."""
    copy, data, out = pipeline["copy"], pipeline["data"], pipeline["out"]
    assert sorted(p.name for p in pipeline["work"].iterdir()) == [copy.name], "something was written beside the copy"
    assert data.is_relative_to(copy) and out.is_relative_to(copy), f"default folders {data}, {out} outside {copy}"
    assert any(data.iterdir()), f"synthesize wrote nothing into {data}"
    for path in (out / "models" / "model.pt", out / "metrics.json", out / "metrics_per_case.csv"):
        assert path.is_file(), f"{path} is not inside the copy"
    new_in_repo = files_under(BUNDLES / pipeline["area"]) - pipeline["repo_files_before"]
    assert not new_in_repo, f"running the copy wrote into the repository's bundle folder: {sorted(new_in_repo)[:5]}"


def export_commands(area: str) -> list[str]:
    """The ``ckpt_export`` command lines printed in the model card."""
    text = (BUNDLES / area / "docs" / "README.md").read_text()
    return [line.strip() for line in text.splitlines() if line.strip().startswith("python -m monai.bundle ckpt_export")]


def with_paths(command: str, filepath: Path, ckpt: Path) -> list[str]:
    """The printed command as an argument list, only ``--filepath``, ``--ckpt_file`` and ``--ckpt_path`` (the same
    checkpoint: the training settings beside it choose the network's size) pointed at the test's files."""
    args = shlex.split(command)
    for flag, value in (("--filepath", filepath), ("--ckpt_file", ckpt), ("--ckpt_path", ckpt)):
        assert flag in args, f"the printed export command has no {flag}: {command}"
        args[args.index(flag) + 1] = str(value)
    return args[3:]  # after "python -m monai.bundle"


def expected_range_holds(output: torch.Tensor, declared: dict) -> str | None:
    """Why ``output`` contradicts the declared output format (None when it agrees)."""
    if output.shape[1] != declared["num_channels"]:
        return f"{output.shape[1]} channels, {declared['num_channels']} declared"
    low_high = declared["value_range"]
    if low_high:  # bounded output declared: every value inside it
        if output.min() < low_high[0] or output.max() > low_high[1]:
            return f"values {output.min():.3g}..{output.max():.3g} outside the declared {low_high}"
        return None
    # unbounded (logits) declared: the description says so, and the values are not probabilities
    labels = " ".join(str(v) for v in declared.get("channel_def", {}).values()) + " " + declared["format"]
    if "logit" not in labels:
        return "an unbounded value_range needs the channels described as logits"
    if output.min() >= 0 and output.max() <= 1:
        return f"declared logits but every value is in [0, 1] ({output.min():.3g}..{output.max():.3g})"
    return None


def test_network_matches_metadata_and_printed_export_works(main_pipeline):
    """MONAI's ``verify_net_in_out`` on the copy (the Zoo's check); the declared output channels and value range
    against a forward pass of the real-size network; the model card's TorchScript export commands, exactly as printed
    (only the output and checkpoint paths replaced), from the repository root and from the copy, each giving the
    eager network's output."""
    from monai.bundle import ConfigParser, verify_net_in_out
    from monai.bundle.scripts import _get_fake_spatial_shape

    area, copy = main_pipeline["area"], main_pipeline["copy"]
    exports = copy / "exports"
    exports.mkdir()
    meta = json.loads((copy / "configs" / "metadata.json").read_text())
    declared_in = meta["network_data_format"]["inputs"]["image"]
    declared_out = next(iter(meta["network_data_format"]["outputs"].values()))
    with bundle_in_process(copy):
        verify_net_in_out("network_def", meta_file=str(copy / "configs" / "metadata.json"),
                          config_file=str(copy / "configs" / "inference.json"), device="cpu", n=2,
                          bundle_root=str(copy), ckpt_path=str(exports / "seeded.pt"))
        parser = ConfigParser()
        parser.read_config(str(copy / "configs" / "inference.json"))
        parser["bundle_root"] = str(copy)
        parser["ckpt_path"] = str(exports / "seeded.pt")  # no model.json beside it: the default (real-size) network
        torch.manual_seed(0)
        net = parser.get_parsed_content("network_def").eval()
        torch.save(net.state_dict(), exports / "seeded.pt")
        shape = (4, declared_in["num_channels"], *_get_fake_spatial_shape(declared_in["spatial_shape"], n=2))
        low, high = declared_in["value_range"] or (0.0, 1.0)
        x = low + (high - low) * torch.rand(*shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            eager = net(x)
    problem = expected_range_holds(eager, declared_out)
    assert problem is None, f"{area}: network_data_format.outputs is not what the network returns: {problem}"

    commands = export_commands(area)
    from_root = [c for c in commands if f"bundles/{area}/configs/" in c]
    from_bundle = [c for c in commands if "bundles/" not in c and " configs/" in c]
    assert from_root and from_bundle, f"{area}: the model card must print the export command for both places"
    # The two printed commands differ only by the bundle prefix of their config paths (checked here), so one export
    # run (~10 s) covers both; the one from inside the copy also proves the copy needs nothing from the repository.
    ts_path = exports / "model.ts"
    in_copy = with_paths(from_bundle[0], ts_path, exports / "seeded.pt")
    assert [a.replace(f"bundles/{area}/", "") for a in with_paths(from_root[0], ts_path, exports / "seeded.pt")] \
        == in_copy, f"{area}: the export commands for the repository root and the bundle folder differ"
    run_monai_bundle(in_copy, cwd=copy)
    with torch.no_grad():
        exported = torch.jit.load(str(ts_path), map_location="cpu").eval()(x)
    err = (exported - eager).abs().max().item()
    assert err < 1e-4, f"{area}: TorchScript from {copy} differs from the eager network by {err}"


def test_no_personal_paths_or_device_pinning():
    offenders = []
    for folder in (REPO / "bundles", REPO / "common"):
        for path in folder.rglob("*"):
            if path.suffix in {".py", ".json", ".conf"} and path.is_file():
                text = path.read_text(errors="ignore")
                if "/home/" in text or "CUDA_VISIBLE_DEVICES" in text:
                    offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"personal paths or device pinning in {offenders}"


# overrides that the commands accept without a config id of that name (MONAI's own switches)
RUN_SWITCHES = {"config_file", "meta_file", "logging_file", "tracking", "tracking_uri", "args_file"}


def printed_run_commands(area: str) -> list[list[str]]:
    """The ``python -m monai.bundle run`` lines the model card prints (``torchrun ... -m monai.bundle run`` too),
    each as an argument list from ``run`` on."""
    text = (BUNDLES / area / "docs" / "README.md").read_text()
    commands = []
    for line in text.splitlines():
        line = line.strip()
        if "monai.bundle run " in line and not line.startswith(("#", "|", ">")):
            words = shlex.split(line.split("#")[0] if " #" in line else line)
            commands.append(words[words.index("run"):])
    return commands


@pytest.mark.parametrize("area", AREAS)
def test_printed_run_commands_name_existing_configs_and_ids(area):
    """Every ``monai.bundle run`` command of the model card (issue 13: commands run as printed): its config files
    exist and merge, and every ``--id`` it sets is an id of the merged config or one of MONAI's switches (MONAI adds
    a misspelt id silently); inference commands name ``--input_dir`` (the default folder exists only after a
    default-folder training)."""
    from monai.bundle import ConfigParser

    commands = printed_run_commands(area)
    assert commands, f"{area}: the model card prints no monai.bundle run command"
    for words in commands:
        flags = {w[2:].split("=")[0]: i for i, w in enumerate(words) if w.startswith("--")}
        value = words[flags["config_file"] + 1] if "config_file" in flags else ""
        files = re.findall(r"[\w./-]+\.json", value)
        assert files, f"{area}: no config file in {' '.join(words)}"
        root = REPO if files[0].startswith("bundles/") else BUNDLES / area
        paths = [root / f for f in files]
        assert all(p.is_file() for p in paths), f"{area}: {' '.join(words)} names a missing config"
        parser = ConfigParser()
        parser.read_config([str(p) for p in paths])
        unknown = sorted(f for f in flags if f not in RUN_SWITCHES and f not in parser)
        assert not unknown, f"{area}: {' '.join(words)} sets ids no config defines: {unknown}"
        if any(p.name == "inference.json" for p in paths):
            assert "input_dir" in flags, f"{area}: {' '.join(words)} has no --input_dir"


# ------------------------------------------------------------------------------ the dialect (issue 14, item 1)
# docs/bundle-conventions.md "One dialect": one id per meaning, one form per mechanism, in every bundle.
RETIRED_IDS = {  # old id -> the dialect's id; none may come back in any config
    "samples_per_image": "samples_per_case", "slices_per_volume": "samples_per_case",
    "patch_size": "roi_size", "inference_roi": "sw_roi_size", "image_size": "roi_size or synthetic_image_size",
    "image_height": "synthetic_image_size", "image_width": "synthetic_image_size", "slide_size": "synthetic_image_size",
    "test": "dataset/dataloader", "test_data": "dataset", "test_dataset": "dataset", "test_dataloader": "dataloader",
    "test_preprocessing": "preprocessing", "test_postprocessing": "postprocessing", "evaluate_split": "dataset",
    "check_checkpoint": "common.checkpoint.require_checkpoint in run",
}
RANK0_ONLY = "$not common.distributed.is_rank0()"
REQUIRE_CHECKPOINT = {"_target_": "common.checkpoint.require_checkpoint", "path": "$str(@ckpt_path)"}


def raw_config(area: str, name: str) -> dict:
    return json.loads((BUNDLES / area / "configs" / f"{name}.json").read_text())


def walk(node, path=""):
    """Every (path, key, value) of a JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}#{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}#{i}")


@pytest.mark.parametrize("area", AREAS)
def test_dialect_ids(area):
    """One id per meaning: ``roi_size`` (network input) in train.json and recorded beside the model, read back by
    evaluate and inference; crops per case only through ``samples_per_case``; the phantom's geometry through
    ``synthetic_image_size`` / ``synthetic_spacing`` in synthesize.json and train.json; no retired id anywhere."""
    configs = {n: raw_config(area, n) for n in ("train", "evaluate", "inference", "multi_gpu_train", "synthesize",
                                                 "tiny")}
    for name, cfg in configs.items():
        back = sorted(set(cfg) & set(RETIRED_IDS))
        assert not back, f"{area}: {name}.json defines retired ids {back} (use {[RETIRED_IDS[k] for k in back]})"
    train = configs["train"]
    assert "roi_size" in train, f"{area}: train.json has no roi_size (the network input size)"
    # the network input at inference: the sliding window where it differs from the training patch (eye), else roi_size
    window = "sw_roi_size" if "sw_roi_size" in train else "roi_size"
    saver = [h for h in train["validate"]["handlers"] if h.get("_target_") == "common.checkpoint.BestModelSaver"]
    assert saver and saver[0]["settings"].get(window) == f"@{window}", f"{area}: {window} not in model.json"
    read_back = configs["inference"][window]
    assert read_back.startswith(f"$common.checkpoint.model_setting(@ckpt_path, '{window}',"), read_back
    inferers = [v for p, k, v in walk(train) if k == "_target_" and v == "SlidingWindowInferer"]
    if inferers:  # one sliding-window id per meaning: roi_size or sw_roi_size, sw_batch_size, sw_overlap
        for part in ("validate",):
            inferer = train[part]["inferer"]
            assert (inferer["roi_size"], inferer["sw_batch_size"], inferer["overlap"]) == (
                f"@{window}", "@sw_batch_size", "@sw_overlap"), f"{area}: {inferer}"
    crops = [(p, v) for p, k, v in walk(train) if k == "num_samples"]
    assert all(v == "@samples_per_case" for _, v in crops), f"{area}: crops per case not by samples_per_case: {crops}"
    assert bool(crops) == ("samples_per_case" in train), f"{area}: samples_per_case defined but unused (or not)"
    geometry = {"synthetic_image_size", "synthetic_spacing"}
    assert geometry & set(configs["synthesize"]), f"{area}: synthesize.json names no phantom geometry id"
    assert geometry & set(configs["synthesize"]) <= set(train), f"{area}: train.json (first-use synthesis) differs"


@pytest.mark.parametrize("area", AREAS)
def test_dialect_evaluate_split_and_checkpoint_check(area):
    """evaluate.json names the test split with the Model Zoo's ids ``preprocessing`` -> ``dataset`` -> ``dataloader``
    -> ``evaluator``, and checks the checkpoint with ``common.checkpoint.require_checkpoint`` before the evaluator
    runs; no bundle keeps a checkpoint check of its own."""
    evaluate = raw_config(area, "evaluate")
    assert {"preprocessing", "dataset", "dataloader", "evaluator"} <= set(evaluate), sorted(evaluate)
    assert evaluate["dataset"]["transform"] == "@preprocessing"
    assert evaluate["dataloader"]["dataset"] == "@dataset"
    assert evaluate["evaluator"]["val_data_loader"] == "@dataloader"
    run = evaluate["run"]
    assert REQUIRE_CHECKPOINT in run, f"{area}: evaluate's run does not check the checkpoint: {run}"
    assert run.index(REQUIRE_CHECKPOINT) < run.index("$@evaluator.run()")
    for path in (BUNDLES / area / "scripts").glob("*.py"):
        own = re.findall(r"^def (\w*checkpoint\w*)\(", path.read_text(), re.MULTILINE)
        assert not own, f"{area}: {path.name} defines its own checkpoint helper {own}; use common.checkpoint"


@pytest.mark.parametrize("area", AREAS)
def test_dialect_multi_process_mixin(area):
    """multi_gpu_train.json holds flat ids only and no ``$`` list comprehension filtering handlers; train.json's
    dataloaders read ``train_sampler``/``train_shuffle``/``val_sampler`` (None/True/None alone, the mixin sets them),
    and every ``StatsHandler`` of training and validation is off on ranks other than 0 by its own ``_disabled_``."""
    mixin, train = raw_config(area, "multi_gpu_train"), raw_config(area, "train")
    nested = [k for k in mixin if "#" in k]
    assert not nested, f"{area}: multi_gpu_train.json overrides nested ids {nested}; use flat ids"
    text = json.dumps(mixin) + json.dumps(train["train"]["trainer"]) + json.dumps(train["validate"]["evaluator"])
    for needle in ("__name__", "isinstance", " for h in "):
        assert needle not in text, f"{area}: handlers filtered by a `{needle}` expression; use _disabled_"
    assert {"train_sampler", "train_shuffle", "val_sampler"} <= set(mixin) and mixin["train_shuffle"] is False
    assert (train["train_sampler"], train["train_shuffle"], train["val_sampler"]) == (None, True, None)
    assert train["train"]["dataloader"]["sampler"] == "@train_sampler"
    assert train["train"]["dataloader"]["shuffle"] == "@train_shuffle"
    assert train["validate"]["dataloader"]["sampler"] == "@val_sampler"
    assert train["train"]["trainer"]["train_handlers"] == "@train#handlers"
    assert train["validate"]["evaluator"]["val_handlers"] == "@validate#handlers"
    stats = [h for part in ("train", "validate") for h in train[part]["handlers"] if h["_target_"] == "StatsHandler"]
    assert stats and all(h.get("_disabled_") == RANK0_ONLY for h in stats), f"{area}: {stats}"


@pytest.mark.parametrize("area", AREAS)
def test_dialect_classification_metrics_on_monai(area):
    """AUC and the confusion-matrix ratios come from ``common.classification`` (MONAI), not from bundle code."""
    evaluate = raw_config(area, "evaluate")
    for _, key, value in walk(evaluate):
        if key == "_target_" and isinstance(value, str) and value.startswith("scripts.metrics."):
            assert value.rsplit(".", 1)[1] not in {"auc", "accuracy", "precision", "sensitivity", "specificity"}, value
    for path in (BUNDLES / area / "scripts").glob("*.py"):
        if path.name.startswith("benchmark"):
            continue  # baselines outside the bundle's workflows
        assert "roc_auc_score" not in path.read_text(), f"{area}: {path.name} computes its own AUC"


# ------------------------------------------------------------------------------ preprocessing written once (item 3)
PREPROCESSING = "scripts.transforms.preprocessing"
#: arguments of the one preprocessing function that say which workflow calls it; every other argument is a setting
PREPROCESSING_ROLES = {"with_label", "resample_label", "loader", "stain_augmentation"}


def _preprocessing_calls(node, path: str = "") -> list[tuple[str, dict]]:
    """Every ``scripts.transforms.preprocessing`` component of a raw config, with its ``#`` path."""
    found = []
    if isinstance(node, dict):
        if node.get("_target_") == PREPROCESSING:
            found.append((path, node))
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return found
    for key, value in items:
        found += _preprocessing_calls(value, f"{path}#{key}" if path else str(key))
    return found


def _reaches_preprocessing(config: dict, node, seen: frozenset = frozenset()) -> bool:
    """Whether ``node`` is, holds or refers (``@id``, ``%id``, also in ``$`` expressions) to a preprocessing call."""
    if isinstance(node, dict):
        return node.get("_target_") == PREPROCESSING or any(
            _reaches_preprocessing(config, v, seen) for v in node.values())
    if isinstance(node, list):
        return any(_reaches_preprocessing(config, v, seen) for v in node)
    if not isinstance(node, str):
        return False
    for ref in re.findall(r"[@%]([A-Za-z_][\w#]*)", node):
        if ref in seen:
            continue
        target = config
        for part in ref.split("#"):
            if isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                target = target.get(part) if isinstance(target, dict) else None
        if _reaches_preprocessing(config, target, seen | {ref}):
            return True
    return False


def _loaders_outside_calls(node, inside: bool = False) -> list[str]:
    """``_target_`` names of loading transforms (``Load*``) that are not an argument of a preprocessing call."""
    found = []
    if isinstance(node, dict):
        inside = inside or node.get("_target_") == PREPROCESSING
        target = node.get("_target_")
        if not inside and isinstance(target, str) and target.rsplit(".", 1)[-1].startswith("Load"):
            found.append(target)
        values = node.values()
    elif isinstance(node, list):
        values = node
    else:
        return found
    for value in values:
        found += _loaders_outside_calls(value, inside)
    return found


def _signature(obj, depth: int = 0):
    """A comparable form of a transform's settings: plain values, arrays as lists, nested objects to depth 3."""
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, float) and math.isnan(obj):
        return "nan"
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (type, torch.dtype)):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [_signature(v, depth) for v in obj]
    if hasattr(obj, "tolist") and not callable(getattr(obj, "__call__", None)):
        return _signature(obj.tolist(), depth)
    if depth < 3 and hasattr(obj, "__dict__"):
        return (type(obj).__name__, {k: _signature(v, depth + 1) for k, v in sorted(vars(obj).items())
                                     if not k.startswith("_") and k not in ("R", "keys", "allow_missing_keys")})
    return type(obj).__name__


@pytest.mark.parametrize("area", AREAS)
def test_dialect_preprocessing_written_once(area, tmp_path):
    """Issue 14 item 3: the deterministic preprocessing (loading, geometry, intensity, size) is written once, as
    ``scripts/transforms.py::preprocessing``; train.json's ``train#preprocessing`` and ``validate#preprocessing``,
    evaluate.json's ``preprocessing`` and inference.json's ``preprocessing`` all reach it, no config lists a loader of
    its own, every call passes the same setting ids (recorded in ``model.json`` and read back by inference), and what
    differs between workflows is an argument (``with_label``, ``resample_label``, ``loader``, ``stain_augmentation``).
    Parsed, inference's preprocessing has the types of evaluate's, with the same settings on the image."""
    from monai.bundle import ConfigParser

    source = (BUNDLES / area / "scripts" / "transforms.py").read_text()
    assert re.search(r"^def preprocessing\(", source, re.MULTILINE), f"{area}: scripts/transforms.py::preprocessing"
    train, evaluate, inference = (raw_config(area, n) for n in ("train", "evaluate", "inference"))
    merged = {**train, **evaluate}  # evaluate.json is merged over train.json
    uses = (("train.json", train, train, ("train#preprocessing", "validate#preprocessing")),
            ("evaluate.json", evaluate, merged, ("preprocessing",)),
            ("inference.json", inference, inference, ("preprocessing",)))
    for name, own, config, ids in uses:
        for id_ in ids:
            node = config
            for part in id_.split("#"):
                node = node[part]
            assert _reaches_preprocessing(config, node), f"{area}: {name} {id_} does not use {PREPROCESSING}"
        loaders = _loaders_outside_calls(own)
        assert not loaders, f"{area}: {name} loads with {loaders} outside {PREPROCESSING} (a second chain)"
    pre = inference["preprocessing"]
    assert pre.get("_target_") == "Compose" and pre["transforms"].get("_target_") == PREPROCESSING, pre
    calls = [c for cfg in (train, evaluate, inference) for c in _preprocessing_calls(cfg)]
    settings = [{k: v for k, v in call.items() if k != "_target_" and k not in PREPROCESSING_ROLES}
                for _, call in calls]
    assert all(s == settings[0] for s in settings), f"{area}: the calls pass different settings: {calls}"
    saver = [h for h in train["validate"]["handlers"] if h.get("_target_") == "common.checkpoint.BestModelSaver"][0]
    for arg, value in settings[0].items():
        assert isinstance(value, str) and value.startswith("@"), f"{area}: {arg}={value!r} is not a train.json id"
        id_ = value[1:]
        assert saver["settings"].get(id_) == value, f"{area}: {id_} is not recorded in model.json"
        assert str(inference.get(id_, "")).startswith(f"$common.checkpoint.model_setting(@ckpt_path, '{id_}',"), (
            f"{area}: inference.json does not read {id_} back from model.json")
    # parsed (defaults: no model.json beside the checkpoint): inference's chain is evaluate's, settings included
    import_bundle_module(area, "transforms")
    if (BUNDLES / area / "scripts" / "inference.py").is_file():
        import_bundle_module(area, "inference")
    built = {}
    for key, names in (("evaluate", ("train", "evaluate")), ("inference", ("inference",))):
        parser = ConfigParser()
        parser.read_config([str(BUNDLES / area / "configs" / f"{n}.json") for n in names])
        parser.update({"bundle_root": str(BUNDLES / area), "ckpt_path": str(tmp_path / "elsewhere" / "model.pt")})
        built[key] = list(parser.get_parsed_content("preprocessing").transforms)
    evaluated = [t for t in built["evaluate"] if "image" in getattr(t, "keys", ("image",))]
    assert len(evaluated) == len(built["inference"]), f"{area}: {built}"
    for ev, inf in zip(evaluated, built["inference"]):
        assert isinstance(inf, type(ev)), f"{area}: inference has {type(inf).__name__} where evaluate has {ev}"
        if tuple(getattr(ev, "keys", ())) == tuple(getattr(inf, "keys", ())) == ("image",):
            assert _signature(inf) == _signature(ev), f"{area}: {type(inf).__name__} set up differently"
