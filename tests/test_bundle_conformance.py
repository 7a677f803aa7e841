"""Conformance harness: every folder in ``bundles/`` keeps the contract of DESIGN.md, end to end.

For each bundle, in subprocesses from the repository root (each bundle's ``scripts`` package needs its own
interpreter): synthesize → train (1 epoch, tiny) → evaluate → inference, with exactly the commands of DESIGN.md and
the bundle's ``configs/tiny.json`` merged last, for the first workflow its ``metadata.json`` declares (one run per
bundle, shared with the bundle's own tests: ``tiny_pipeline`` in conftest.py); then the outputs are checked for their
documented form, the network for its declared input/output (``monai.bundle verify_net_in_out``), and a TorchScript
export of the trained checkpoint (``monai.bundle ckpt_export``) for giving the eager network's output. New bundle
folders are picked up without edits.
"""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest

from bundle_harness import BUNDLES, REPO, SCHEMA, import_bundle_module, run_monai_bundle, tiny_settings

AREAS = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file()) if BUNDLES.is_dir() else []
CONTRACT_FILES = ("metadata.json", "train.json", "evaluate.json", "inference.json", "multi_gpu_train.json",
                  "synthesize.json", "logging.conf", "tiny.json")

pytestmark = pytest.mark.skipif(not AREAS, reason="no bundle in bundles/ yet")


@pytest.fixture(scope="module", params=AREAS)
def pipeline(request, tiny_pipeline):
    """Synthesize, train, evaluate and infer once per bundle (shared with the bundle's own tests)."""
    return tiny_pipeline(request.param)


@pytest.mark.parametrize("area", AREAS)
def test_contract_files_present(area):
    configs = BUNDLES / area / "configs"
    missing = [f for f in CONTRACT_FILES if not (configs / f).is_file()]
    assert not missing, f"{area}: missing configs {missing}"
    for name in ("docs/README.md", "LICENSE", "scripts/__init__.py"):
        assert (BUNDLES / area / name).is_file(), f"{area}: missing {name}"


# recorded in model.json for provenance; evaluate and inference do not use them (issue 16)
TRAINING_ONLY = {"pretrained_ckpt", "freeze", "pretrained_lr_scale"}
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


def test_train_properties_and_outputs(pipeline):
    """Every required property of MONAI's train workflow exists under its canonical id (checked without resolving
    the config, since the bundle's ``scripts`` are importable only inside ``run``)."""
    from monai.bundle import ConfigParser
    from monai.bundle.properties import TrainProperties
    from monai.utils import BundleProperty, BundlePropertyConfig

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / pipeline["area"] / "configs" / "train.json"))
    missing = [name for name, prop in TrainProperties.items()
               if prop.get(BundleProperty.REQUIRED) and prop[BundlePropertyConfig.ID] not in parser]
    assert not missing, f"train.json lacks the required properties {missing}"
    model = pipeline["out"] / "models" / "model.pt"
    assert model.is_file() and model.stat().st_size > 0, "train wrote no models/model.pt"


def test_training_settings_beside_the_model_reach_evaluate_and_inference(pipeline):
    """Training writes ``models/model.json`` beside ``model.pt``; evaluate and inference parsed WITHOUT tiny.json and
    given only ``ckpt_path`` resolve every recorded id to the trained (tiny) value; the command line still wins."""
    from monai.bundle import ConfigParser

    area, model = pipeline["area"], pipeline["out"] / "models" / "model.pt"
    settings = json.loads(model.with_suffix(".json").read_text())
    tiny = pipeline["tiny"]
    assert settings and any(k in tiny for k in settings), f"{area}: model.json records none of tiny.json's ids"
    for names in (("inference",), ("train", "evaluate")):
        parser = ConfigParser()
        parser.read_config([str(BUNDLES / area / "configs" / f"{n}.json") for n in names])
        parser["ckpt_path"] = str(model)
        for key, value in settings.items():
            if key in TRAINING_ONLY:
                continue
            assert parser.get_parsed_content(key) == value, f"{area} {'+'.join(names)}: {key} != recorded {value!r}"
        key = next(k for k in settings if k not in TRAINING_ONLY)
        parser = ConfigParser()
        parser.read_config([str(BUNDLES / area / "configs" / f"{n}.json") for n in names])
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
    train = (BUNDLES / area / "configs" / "train.json").read_text()
    for needed in ('"settings": {"pretrained_ckpt": "@pretrained_ckpt", "freeze": "@freeze", "pretrained_lr_scale"',
                   '"transfer": "$common.transfer.summary(@network)"',
                   '"params": "$common.transfer.param_groups(@network, @learning_rate, @pretrained_lr_scale)"'):
        assert needed in train, f"{area}: train.json lacks {needed}"
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
    tables = [p for p in (pred / "predictions.csv", pred / "clinical.csv") if p.is_file()]
    assert files or tables, f"inference wrote nothing under {pred}"
    assert not [p for p in pred.rglob(".*.tmp*")], "temporary files left behind"


def test_network_in_out_and_torchscript_export(pipeline):
    area, work = pipeline["area"], pipeline["work"]
    bundle = BUNDLES / area
    configs = "['configs/inference.json','configs/tiny.json']"
    run_monai_bundle(["verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                      "--config_file", configs], cwd=bundle)
    ts_path = work / "model.ts"
    run_monai_bundle(["ckpt_export", "network_def", "--filepath", ts_path, "--ckpt_file",
                      pipeline["out"] / "models" / "model.pt", "--meta_file", "configs/metadata.json",
                      "--config_file", configs], cwd=bundle)
    shape = pipeline["tiny"]["harness_input_shape"]
    code = (
        "import sys, torch; from monai.bundle import ConfigParser\n"
        f"p = ConfigParser(); p.read_config({['configs/inference.json', 'configs/tiny.json']!r})\n"
        "net = p.get_parsed_content('network_def')\n"
        f"net.load_state_dict(torch.load({str(pipeline['out'] / 'models' / 'model.pt')!r}, map_location='cpu'))\n"
        f"ts = torch.jit.load({str(ts_path)!r}, map_location='cpu')\n"
        f"x = torch.rand(*{list(shape)!r}, generator=torch.Generator().manual_seed(0))\n"
        "net.eval(); ts.eval()\n"
        "with torch.no_grad(): a, b = net(x), ts(x)\n"
        "a = a if torch.is_tensor(a) else a[0]; b = b if torch.is_tensor(b) else b[0]\n"
        "err = (a - b).abs().max().item(); print('max abs diff', err); sys.exit(0 if err < 1e-4 else 1)\n"
    )
    run_monai_bundle(["-c", code], prefix=[sys.executable], cwd=bundle)


def test_no_personal_paths_or_device_pinning():
    offenders = []
    for folder in (REPO / "bundles", REPO / "common"):
        for path in folder.rglob("*"):
            if path.suffix in {".py", ".json", ".conf"} and path.is_file():
                text = path.read_text(errors="ignore")
                if "/home/" in text or "CUDA_VISIBLE_DEVICES" in text:
                    offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"personal paths or device pinning in {offenders}"
