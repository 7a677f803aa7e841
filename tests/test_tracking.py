"""MLflow tracking through MONAI's ``--tracking mlflow`` switch plus ``common.tracking.MLflowRunRecorder``.

A real ``mlflow server`` (SQLite backend, temp folder, free port) receives a tiny training of the minimal fixture
bundle over HTTP; a second tiny training + evaluation uses MONAI's default local SQLite store under ``output_dir``.
Both bundle runs go through ``python -m monai.bundle run`` in subprocesses and are started side by side to keep the
module's wall time down; everything is read back through ``MlflowClient``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "minimal_bundle"
TRAIN = "tests/fixtures/minimal_bundle/configs/train.json"
TRAIN_EVALUATE = f"['{TRAIN}','tests/fixtures/minimal_bundle/configs/evaluate.json']"
EXPERIMENT = json.loads((FIXTURE / "configs" / "metadata.json").read_text())["name"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
       "OMP_NUM_THREADS": "1", "GIT_PYTHON_REFRESH": "quiet"}
ENV.pop("MLFLOW_TRACKING_URI", None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bundle(args: list[str], log: Path) -> subprocess.Popen:
    """Start ``python -m monai.bundle run ...`` from the repository root, output to ``log``."""
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "monai.bundle", "run", *args], cwd=REPO, env=ENV, stdout=handle,
                            stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log: Path, what: str, timeout: float = 300) -> None:
    code = proc.wait(timeout=timeout)
    if code != 0:
        pytest.fail(f"{what} failed ({code}):\n{log.read_text()[-6000:]}")


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"mlflow server did not answer at {url} within {timeout} s:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server by its PID: SIGTERM to its process group, SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """Run (in parallel) a tracked training over HTTP and a tracked training + evaluation on the local store."""
    root = tmp_path_factory.mktemp("tracking")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server_log, server_db = root / "server.log", root / "server" / "mlflow.db"
    server_db.parent.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{server_db}",
         "--default-artifact-root", str(root / "server" / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, env=ENV, stdout=open(server_log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        local_out = root / "local"
        local_log = root / "local_train.log"
        local = _bundle(["--config_file", TRAIN, "--output_dir", str(local_out), "--epochs", "1", "--tracking",
                         "mlflow"], local_log)
        _wait_http(url, server, server_log)
        http_out, http_log = root / "http", root / "http_train.log"
        remote = _bundle(["--config_file", TRAIN, "--output_dir", str(http_out), "--epochs", "3", "--tracking",
                          "mlflow", "--tracking_uri", url], http_log)
        _finish(local, local_log, "local tracked training")
        eval_log = root / "local_evaluate.log"
        evaluate = _bundle(["--config_file", TRAIN_EVALUATE, "--output_dir", str(local_out), "--tracking", "mlflow"],
                           eval_log)
        _finish(remote, http_log, "training tracked over HTTP")
        _finish(evaluate, eval_log, "local tracked evaluation")
        yield {"url": url, "http_out": http_out, "local_out": local_out, "server_root": root / "server"}
    finally:
        _stop(server)


def _runs(uri: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"no experiment {EXPERIMENT!r} in {uri}"
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_http_server_run_has_params_curves_and_artifacts(tracked):
    client, runs = _runs(tracked["url"])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["workflow"] == "train"
    assert run.info.run_name.startswith("train seed=0 20"), run.info.run_name  # config stem, seed and time
    params = run.data.params
    expected = {"learning_rate": "0.01", "epochs": "3", "batch_size": "4", "val_interval": "1", "seed": "0",
                "num_cases": "8", "image_size": "32", "channels": "[4, 8]", "device": "cpu", "dataset_size": "8",
                "max_epochs": "3"}
    assert {k: params.get(k) for k in expected} == expected
    import monai
    import torch

    assert params["monai_version"] == monai.__version__ and params["torch_version"] == torch.__version__
    for key in ("val_mean_dice", "val_mean_iou", "train_loss_epoch"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3], (key, history)
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 3 * 2  # per iteration: 8 cases / 4
    best = client.get_metric_history(run.info.run_id, "val_best_mean_dice")
    assert len(best) == 1 and best[0].value == pytest.approx(
        max(m.value for m in client.get_metric_history(run.info.run_id, "val_mean_dice")))
    artifacts = _artifacts(client, run.info.run_id)
    configs = [a for a in artifacts if a.startswith("config_") and a.endswith(".json")]
    assert len(configs) == 1, artifacts  # dropped by MONAI itself because --output_dir came from the command line
    assert {"metadata.json", "models/model.pt"} <= set(artifacts)
    assert {"overlays/case_0.png", "overlays/case_1.png"} <= set(artifacts)
    executed = json.loads(Path(client.download_artifacts(run.info.run_id, configs[0],
                                                         str(tracked["http_out"] / "dl"))).read_text())
    assert executed["epochs"] == 3 and executed["output_dir"] == str(tracked["http_out"])
    assert any((tracked["server_root"] / "artifacts").rglob("model.pt"))  # stored under the server's artifact root


def test_local_default_store_under_output_dir(tracked):
    db = tracked["local_out"] / "mlruns.db"
    assert db.is_file() and db.stat().st_size > 0
    client, runs = _runs(f"sqlite:///{db}")
    assert [r.data.tags.get("workflow") for r in runs] == ["train", "evaluate"]
    train, evaluate = runs
    for run in runs:  # the fixture's metadata.json declares no workflows: its one workflow is "default"
        assert (run.data.tags["bundle_workflow"], run.data.tags["bundle_workflows"]) == ("default", "default")
    assert train.data.params["epochs"] == "1" and train.data.params["dataset_size"] == "8"
    assert [m.step for m in client.get_metric_history(train.info.run_id, "val_mean_dice")] == [1]
    assert evaluate.info.run_name.startswith("train+evaluate seed=0 20"), evaluate.info.run_name
    assert evaluate.info.status == "FINISHED" and evaluate.data.tags["key_metric"] == "dice"
    metrics_json = json.loads((tracked["local_out"] / "metrics.json").read_text())
    m = evaluate.data.metrics
    assert m["dice"] == pytest.approx(metrics_json["dice"])
    assert (m["dice_ci95_low"], m["dice_ci95_high"]) == pytest.approx(tuple(metrics_json["dice_ci95"]))
    assert m["num_cases"] == metrics_json["num_cases"] == 4
    assert evaluate.data.params["dataset_size"] == "4"
    artifacts = _artifacts(client, evaluate.info.run_id)
    assert "metrics.json" in artifacts and "metadata.json" in artifacts
    assert not any(a.startswith("models/") for a in artifacts)  # checkpoint=false for evaluate
    assert sum(a.startswith("config_") for a in artifacts) == 1
    # the two runs' artifacts live in MONAI's default folder beside the database
    assert (tracked["local_out"] / "mlruns" / train.info.run_id / "artifacts" / "models" / "model.pt").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# in-process unit tests (no MLflow run, no subprocess)
# ---------------------------------------------------------------------------------------------------------------------
def test_recorder_is_inert_without_monai_mlflow_handler(tmp_path):
    from ignite.engine import Engine, Events

    from common.tracking import MLflowRunRecorder

    engine = Engine(lambda e, b: {"loss": 1.0})
    validator = Engine(lambda e, b: None)
    recorder = MLflowRunRecorder(output_dir=tmp_path, params={"lr": 0.1}, validator=validator)
    recorder.attach(engine)
    engine.run([0, 1], max_epochs=2)
    assert not recorder.active
    for event in (Events.ITERATION_COMPLETED, Events.EPOCH_COMPLETED, Events.COMPLETED):
        assert not engine.has_event_handler(recorder.iteration_completed, event)
        assert not engine.has_event_handler(recorder.completed, event)
    assert not validator.has_event_handler(recorder.validation_completed)
    assert list(tmp_path.iterdir()) == []


def test_param_values_flatten_and_stringify():
    import torch

    from common.mlflow_values import param_values

    got = param_values({"lr": 1e-3, "roi": [96, 96, 64], "loss": {"weights": (0.5, 0.5), "r": 0.05}, "amp": False,
                        "device": torch.device("cpu"), "network": torch.nn.Linear(1, 1), "none": None})
    assert got == {"lr": "0.001", "roi": "[96, 96, 64]", "loss.weights": "[0.5, 0.5]", "loss.r": "0.05",
                   "amp": "False", "device": "cpu", "none": "None"}


def test_metric_value_takes_numbers_and_one_element_tensors_only():
    import numpy as np
    import torch

    from common.mlflow_values import metric_value

    assert [metric_value(v) for v in (3, 0.25, True, torch.tensor([0.5]), torch.tensor(0.75), np.array([[2.0]]),
                                      np.float32(0.125))] == [3.0, 0.25, 1.0, 0.5, 0.75, 2.0, 0.125]
    assert [metric_value(v) for v in (torch.ones(2), np.zeros(3), {"loss": 1.0}, "0.5", None)] == [None] * 5


def test_config_names_and_run_name():
    from common.mlflow_values import config_names, default_run_name

    argv = ["x", "run", "--config_file", "['bundles/eye/configs/train.json','bundles/eye/configs/evaluate.json']"]
    assert config_names(argv) == ["train", "evaluate"]
    assert config_names(["x", "run", "--config_file=bundles/eye/configs/inference.json"]) == ["inference"]
    assert default_run_name("train", argv).startswith("train+evaluate ")
    assert default_run_name("evaluate", ["x"]).startswith("evaluate 20")
    assert default_run_name("train", argv, seed=3).startswith("train+evaluate seed=3 20")


def test_bundle_workflow_tag_names_the_declared_workflow_of_the_config_files(tmp_path):
    """breast declares classification then detection: each train/evaluate command line (tiny and multi-GPU extras
    included) is tagged with its own workflow; files that fit none, or two, give no tag; a broken metadata.json only
    costs the tag."""
    from common.tracking import bundle_workflow_tags

    meta = REPO / "bundles" / "breast" / "configs" / "metadata.json"
    both = {"bundle_workflows": "classification,detection"}
    cases = [("train", ["train"], "classification"), ("train", ["train", "multi_gpu_train", "tiny"], "classification"),
             ("evaluate", ["train", "evaluate", "tiny"], "classification"), ("train", ["train_detection"], "detection"),
             ("train", ["train_detection", "multi_gpu_train_detection"], "detection"),
             ("evaluate", ["train_detection.json", "evaluate_detection.json"], "detection")]
    for step, names, expected in cases:
        assert bundle_workflow_tags(meta, step, names) == {"bundle_workflow": expected, **both}, (step, names)
    assert bundle_workflow_tags(meta, "evaluate", ["train", "evaluate", "train_detection", "evaluate_detection"]) == {}
    assert bundle_workflow_tags(meta, "evaluate", ["my_eval"]) == {}
    assert bundle_workflow_tags(None, "train", ["train"]) == {}
    eye = REPO / "bundles" / "eye" / "configs" / "metadata.json"  # one workflow: whatever the files
    assert bundle_workflow_tags(eye, "train", ["my_train"]) == {"bundle_workflow": "segmentation",
                                                                "bundle_workflows": "segmentation"}
    broken = tmp_path / "b" / "configs" / "metadata.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    assert bundle_workflow_tags(broken, "train", ["train"]) == {}


def test_executed_config_found_from_monai_broken_artifact_path(tmp_path):
    from common.monai_workarounds import executed_config_path

    config = tmp_path / "config_20250101_120000.json"
    config.write_text("{}")

    class Handler:  # what MONAI passes when --output_dir comes from the command line
        artifacts = (f"{tmp_path} + '/config_20250101_120000.json'",)

    assert executed_config_path(Handler(), None) == config
    Handler.artifacts = (None,)
    assert executed_config_path(Handler(), tmp_path) == config
    assert executed_config_path(Handler(), tmp_path, since=time.time() + 60) is None


# ---------------------------------------------------------------------------------------------------------------------
# the real bundles over HTTP (slow: synthesize + a 2-epoch tiny training each; deselect with -m "not slow")
# ---------------------------------------------------------------------------------------------------------------------
AREAS = ("brain", "eye", "pathology", "breast", "cardiac")


def _wired(area: str) -> bool:
    configs = REPO / "bundles" / area / "configs"
    train, tiny = configs / "train.json", configs / "tiny.json"
    return train.is_file() and tiny.is_file() and "common.tracking.MLflowRunRecorder" in train.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("area", AREAS)
def test_real_bundle_over_http(area, tracked, tmp_path, run_bundle):
    if not _wired(area):
        pytest.skip(f"bundles/{area} does not attach common.tracking.MLflowRunRecorder yet")
    from bundle_harness import config_list

    data, out = tmp_path / "data", tmp_path / "out"
    run_bundle(["run", "--config_file", config_list(area, "synthesize", "tiny"), "--dataset_dir", data, "--seed", 0],
               env={"OMP_NUM_THREADS": "1"})
    run_bundle(["run", "--config_file", config_list(area, "train", "tiny"), "--dataset_dir", data, "--output_dir", out,
                "--epochs", 2, "--val_interval", 1, "--tracking", "mlflow", "--tracking_uri", tracked["url"]],
               env={"OMP_NUM_THREADS": "1"})
    configs = REPO / "bundles" / area / "configs"
    train_cfg = {**json.loads((configs / "train.json").read_text()), **json.loads((configs / "tiny.json").read_text())}
    name = json.loads((configs / "metadata.json").read_text())["name"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracked["url"])
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no experiment named after metadata.json name {name!r}"
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]
    assert run.info.status == "FINISHED" and run.data.tags["workflow"] == "train"
    params = run.data.params
    assert params["epochs"] == "2" and params["monai_version"]
    if isinstance(train_cfg.get("learning_rate"), (int, float)) and "learning_rate" in params:
        assert float(params["learning_rate"]) == pytest.approx(train_cfg["learning_rate"])
    val_keys = [k for k in run.data.metrics if k.startswith("val_") and not k.startswith("val_best_")]
    assert val_keys, sorted(run.data.metrics)
    for key in val_keys + ["train_loss_epoch"]:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2], key
    artifacts = _artifacts(client, run.info.run_id)
    assert sum(a.startswith("config_") for a in artifacts) == 1 and "metadata.json" in artifacts, artifacts
    assert "models/model.pt" in artifacts, artifacts
