"""Complete what MONAI's ``--tracking mlflow`` switch logs: hyper-parameters, per-epoch curves, artifacts, run name.

MONAI 1.6's switch (``monai.bundle.workflows.ConfigWorkflow.patch_bundle_tracking``) appends an ``MLFlowHandler`` to
``train#handlers``, ``validate#handlers`` and the evaluate workflow's ``handlers``. By itself that run holds only the
params ``max_epochs``/``epoch_length``, the per-iteration ``train_loss``, the validator's metrics under their plain
names, and - only when ``output_dir`` is *not* given on the command line - the executed config (with
``--output_dir O`` the artifact path becomes the literal string ``"O + '/config_<time>.json'"`` and is silently
skipped). Its run name is ``run_<time>``, and its validator handler attaches to the *oldest* unfinished run of the
experiment. The work-arounds for those two MONAI bugs live in ``common.monai_workarounds``.

:class:`MLflowRunRecorder` is attached by every bundle next to MONAI's handler. It never opens a run of its own: at
``STARTED`` it looks for the ``MLFlowHandler`` registered on the same engine and, when there is none (tracking off) or
on a rank other than 0, it detaches itself and costs nothing more. Otherwise it logs into that handler's run:

* tags ``workflow`` (train/evaluate), ``config_files`` and a run name that says config and time
  (e.g. ``train+evaluate 2025-01-31 14:02:11``) unless the config set ``run_name``;
* params: every scalar of the ``params`` dict the config passes (lists/tuples as text, nested dicts flattened with
  ``.``), ``dataset_size`` when given, and the monai/torch/python versions;
* metrics: ``train_loss_epoch`` (mean training loss per epoch) and every validation metric as ``val_<name>``, one
  point per validation epoch (step = training epoch), plus ``val_best_<key metric>`` at the end;
* artifacts at ``COMPLETED``: the executed config (``config_<time>.json``), ``metadata.json``, ``metrics.json``
  (when written by this run), the best checkpoint (under ``models/``) and the PNGs of ``overlay_dir`` written by this
  run (under ``overlays/``).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from common.distributed import is_rank0
from common.monai_workarounds import (
    executed_config_path,
    monai_logs_itself,
    process_start_time,
    share_run_with_validator,
)

logger = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # mlflow's limit for a param value
_CONFIG_NAME = re.compile(r"([\w.-]+?)\.(?:json|yaml|yml)\b")


# --------------------------------------------------------------------------------------------------------------------
# helpers (public: the report and the tests use them)
# --------------------------------------------------------------------------------------------------------------------
def config_names(argv: Sequence[str] | None = None) -> list[str]:
    """The stems of the ``--config_file`` files of this process's command line, e.g. ``["train", "evaluate"]``."""
    argv = list(sys.argv if argv is None else argv)
    value = ""
    for i, arg in enumerate(argv):
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
    return [m.group(1) for m in _CONFIG_NAME.finditer(value)]


def default_run_name(workflow: str = "run", argv: Sequence[str] | None = None, seed: Any = None) -> str:
    """``"<config stems joined by +> [seed=<seed>] <time>"``, e.g. ``"train+evaluate seed=0 2025-01-31 14:02"``."""
    names = config_names(argv)
    label = "+".join(names) if names else workflow
    if seed is not None:
        label += f" seed={seed}"
    return f"{label} {time.strftime('%Y-%m-%d %H:%M:%S')}"


def find_mlflow_handler(engine: Engine) -> Any | None:
    """The ``monai.handlers.MLFlowHandler`` attached to ``engine``, or None (tracking off)."""
    handlers = getattr(engine, "_event_handlers", {})
    for registered in handlers.get(Events.STARTED, []) + [h for hs in handlers.values() for h in hs]:
        func = registered[0]
        parent = getattr(func, "_parent", None)  # ignite wraps filtered handlers
        if parent is not None:
            func = parent() if callable(parent) else parent
        owner = getattr(func, "__self__", None)
        if owner is not None and type(owner).__name__ == "MLFlowHandler":
            return owner
    return None


def param_values(params: Mapping[str, Any] | None, prefix: str = "") -> dict[str, str]:
    """Flatten ``params`` into mlflow param strings: scalars as text, short sequences as text, dicts with ``.`` keys.

    Values that are not hyper-parameters (modules, datasets, callables) are left out.
    """
    out: dict[str, str] = {}
    for key, value in (params or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(param_values(value, prefix=f"{name}."))
            continue
        text = _param_text(value)
        if text is None:
            logger.debug("param %s of type %s is not a scalar hyper-parameter; not logged", name, type(value).__name__)
            continue
        out[name] = text[:MAX_PARAM_LENGTH]
    return out


def _param_text(value: Any) -> str | None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    try:
        import numpy as np
        import torch

        if isinstance(value, torch.device):
            return str(value)
        if isinstance(value, (np.generic,)):
            return str(value.item())
        if isinstance(value, (torch.Tensor, np.ndarray)) and _numel(value) <= 64:
            return str(value.tolist())
    except ImportError:  # pragma: no cover - torch and numpy are requirements
        pass
    if isinstance(value, (list, tuple)):
        items = [_param_text(v) for v in value]
        if all(i is not None for i in items):
            return "[" + ", ".join(items) + "]"
    return None


def _numel(value: Any) -> int:
    n = getattr(value, "numel", None)
    return int(n()) if callable(n) else int(getattr(value, "size", 0))


def metric_value(value: Any) -> float | None:
    """A float for mlflow from a number, a 0-d/1-element tensor or array; None for anything else."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item) and _numel(value) == 1:
        try:
            return float(item())
        except (TypeError, ValueError):
            return None
    return None


def _loss_of(output: Any) -> float | None:
    """The loss value of a MONAI trainer's ``engine.state.output`` (a decollated list of dicts, or a dict)."""
    if isinstance(output, (list, tuple)) and output:
        output = output[0]
    if isinstance(output, Mapping):
        output = output.get("loss")
    return metric_value(output)


# --------------------------------------------------------------------------------------------------------------------
# the handler
# --------------------------------------------------------------------------------------------------------------------
class MLflowRunRecorder:
    """Log params, per-epoch curves and artifacts into the run of MONAI's ``MLFlowHandler`` on the same engine.

    Attach to the trainer (``train#handlers``, with ``validator="@validate#evaluator"``) and to the evaluate
    workflow's ``handlers`` (anywhere in the list). Without MONAI's ``--tracking mlflow`` switch (no ``MLFlowHandler``
    on the engine) and on ranks other than 0 it does nothing. Its epoch and completion steps are registered when the
    engine starts, so they run after every handler the config attached: files those write at ``EPOCH_COMPLETED`` or
    ``COMPLETED`` (``metrics.json``, overlays, the best checkpoint) exist when it uploads them.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        params: Mapping[str, Any] | None = None,
        dataset_size: int | None = None,
        validator: Engine | None = None,
        metadata_file: str | os.PathLike | None = None,
        executed_config: str | os.PathLike | None = None,
        checkpoint: str | os.PathLike | bool | None = True,
        overlay_dir: str | os.PathLike | None = None,
        max_overlays: int = 12,
        run_name: str | None = None,
        workflow: str | None = None,
        loss_transform: Callable[[Any], Any] | None = None,
        val_prefix: str = "val_",
    ) -> None:
        """
        Args:
            output_dir: the workflow's ``output_dir`` (where MONAI writes ``config_<time>.json``, the evaluate
                workflow ``metrics.json`` and training ``models/model.pt``).
            params: the run's hyper-parameters, e.g. ``{"learning_rate": "@learning_rate", "epochs": "@epochs"}``.
            dataset_size: number of training (or evaluated) cases, logged as param ``dataset_size``.
            validator: the training's validation engine; its metrics are logged as ``val_<name>``.
            metadata_file: the bundle's ``configs/metadata.json``, logged as an artifact.
            executed_config: the executed config to log; by default the one MONAI wrote for this run.
            checkpoint: the best checkpoint to log: True for ``<output_dir>/models/model.pt``, a path, or
                False/None for none (evaluate runs).
            overlay_dir: folder of prediction overlay PNGs (``common.overlays``) to log under ``overlays/``.
            max_overlays: at most this many overlays are logged (the first by name).
            run_name: the run name when the config did not set ``run_name``; default config stems and time.
            workflow: ``"train"`` or ``"evaluate"`` tag; by default from the engine type.
            loss_transform: maps ``engine.state.output`` to the loss; default the ``loss`` of MONAI's output.
            val_prefix: prefix of validation metric names.
        """
        self.output_dir = Path(str(output_dir)) if output_dir is not None else None
        self.params = dict(params or {})
        self.dataset_size = dataset_size
        self.validator = validator
        self.metadata_file = Path(str(metadata_file)) if metadata_file else None
        self.executed_config = Path(str(executed_config)) if executed_config else None
        if checkpoint is True:
            self.checkpoint = self.output_dir / "models" / "model.pt" if self.output_dir is not None else None
        elif checkpoint in (False, None, ""):
            self.checkpoint = None
        else:
            self.checkpoint = Path(str(checkpoint))
        self.overlay_dir = Path(str(overlay_dir)) if overlay_dir else None
        self.max_overlays = int(max_overlays)
        self.run_name = run_name
        self.workflow = workflow
        self.loss_transform = loss_transform
        self.val_prefix = val_prefix
        self.mlflow_handler: Any = None
        self.client: Any = None
        self.run_id: str | None = None
        self.started_at = time.time()
        self._losses: list[float] = []

    # -- wiring ------------------------------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.started, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self.started)

    @property
    def active(self) -> bool:
        """True once a run was found on the engine (tracking on, rank 0)."""
        return self.run_id is not None

    def started(self, engine: Engine) -> None:
        """Find MONAI's run (or detach when there is none), name it, log tags and params, hook the curves."""
        mlf = find_mlflow_handler(engine) if is_rank0() else None
        if mlf is None:
            return  # tracking off or not rank 0: nothing registered beyond this one call
        self.started_at = min(self.started_at, time.time())
        if self.run_id is None or mlf.cur_run is None or mlf.cur_run.info.run_id != self.run_id:
            self._open(engine, mlf)
        for event, handler in ((Events.EPOCH_COMPLETED, self.epoch_completed), (Events.COMPLETED, self.completed)):
            if not engine.has_event_handler(handler, event):
                engine.add_event_handler(event, handler)
        if self._is_trainer(engine) and not engine.has_event_handler(self.iteration_completed,
                                                                      Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        if self.validator is not None:
            self._hook_validator(mlf)

    def _open(self, engine: Engine, mlf: Any) -> None:
        workflow = self.workflow or ("train" if self._is_trainer(engine) else "evaluate")
        if mlf.cur_run is None:
            if mlf.run_name is None:
                mlf.run_name = self.run_name or default_run_name(workflow, seed=self.params.get("seed"))
            mlf.start(engine)  # idempotent: MONAI's own STARTED call then finds this run
        self.mlflow_handler, self.client, self.run_id = mlf, mlf.client, mlf.cur_run.info.run_id
        self.workflow = workflow
        tags = {"workflow": workflow, "config_files": "+".join(config_names()) or "unknown"}
        if self.output_dir is not None:
            tags["output_dir"] = str(self.output_dir)
        self._log_batch(params=self._all_params(), tags=tags)
        logger.info("MLflow: logging %s run %s (%s) to %s", workflow, mlf.cur_run.info.run_name, self.run_id,
                    self.client.tracking_uri)

    def _all_params(self) -> dict[str, str]:
        import monai
        import torch

        params = param_values(self.params)
        if self.dataset_size is not None:
            params["dataset_size"] = str(int(self.dataset_size))
        params.update({"monai_version": monai.__version__, "torch_version": torch.__version__,
                       "python_version": platform.python_version()})
        return params

    def _hook_validator(self, mlf: Any) -> None:
        """Make the validator's MONAI handler log into this run, and log its metrics with ``val_`` prefix."""
        share_run_with_validator(mlf, find_mlflow_handler(self.validator))
        if not self.validator.has_event_handler(self.validation_completed, Events.EPOCH_COMPLETED):
            self.validator.add_event_handler(Events.EPOCH_COMPLETED, self.validation_completed)

    @staticmethod
    def _is_trainer(engine: Engine) -> bool:
        from monai.engines import Trainer

        return isinstance(engine, Trainer)

    # -- events ------------------------------------------------------------------------------------------------------
    def iteration_completed(self, engine: Engine) -> None:
        if not self.active:
            return
        output = engine.state.output
        loss = metric_value(self.loss_transform(output)) if self.loss_transform else _loss_of(output)
        if loss is not None and math.isfinite(loss):
            self._losses.append(loss)

    def epoch_completed(self, engine: Engine) -> None:
        if not self.active or not self._losses:
            return
        self._log_metrics({"train_loss_epoch": sum(self._losses) / len(self._losses)}, step=engine.state.epoch)
        self._losses = []

    def validation_completed(self, validator: Engine) -> None:
        """One point per validation epoch: every validation metric as ``val_<name>``, step = training epoch."""
        if not self.active:
            return
        metrics = {f"{self.val_prefix}{k}": metric_value(v) for k, v in validator.state.metrics.items()}
        self._log_metrics({k: v for k, v in metrics.items() if v is not None}, step=validator.state.epoch)

    def completed(self, engine: Engine) -> None:
        """Log the best validation value and the artifacts of this run."""
        if not self.active:
            return
        if self.validator is not None:
            state = self.validator.state
            best, name = getattr(state, "best_metric", None), getattr(state, "key_metric_name", None)
            if name and metric_value(best) is not None and metric_value(best) > -1:
                self._log_metrics({f"{self.val_prefix}best_{name}": metric_value(best)},
                                  step=int(getattr(state, "best_metric_epoch", 0) or 0))
        self.log_artifacts()

    # -- artifacts ---------------------------------------------------------------------------------------------------
    def artifacts(self) -> list[tuple[Path, str | None]]:
        """``(file, artifact folder)`` pairs this run logs at completion."""
        since = self.started_at - 1.0
        found: list[tuple[Path, str | None]] = []
        config = self.executed_config if self.executed_config and self.executed_config.is_file() else \
            executed_config_path(self.mlflow_handler, self.output_dir, since=process_start_time() - 1.0)
        if config is not None and not monai_logs_itself(self.mlflow_handler, config):
            found.append((config, None))
        if self.metadata_file is not None and self.metadata_file.is_file():
            found.append((self.metadata_file, None))
        if self.output_dir is not None:
            metrics = self.output_dir / "metrics.json"
            if metrics.is_file() and metrics.stat().st_mtime >= since:
                found.append((metrics, None))
        if self.checkpoint is not None and self.checkpoint.is_file():
            found.append((self.checkpoint, "models"))
        if self.overlay_dir is not None and self.overlay_dir.is_dir():
            pngs = sorted(p for p in self.overlay_dir.rglob("*.png") if p.stat().st_mtime >= since)
            found.extend((p, "overlays") for p in pngs[: self.max_overlays])
        return found

    def log_artifacts(self) -> None:
        for path, folder in self.artifacts():
            try:
                self.client.log_artifact(self.run_id, str(path), artifact_path=folder)
            except Exception as e:  # noqa: BLE001 - an upload failure must not discard a finished training
                logger.warning("MLflow: could not log artifact %s: %s", path, e)
        metrics_file = self.output_dir / "metrics.json" if self.output_dir is not None else None
        if metrics_file is not None and metrics_file.is_file() and metrics_file.stat().st_mtime >= self.started_at - 1:
            try:
                import json

                key = json.loads(metrics_file.read_text()).get("key_metric")
                if isinstance(key, str):
                    self._log_batch(tags={"key_metric": key})
            except (OSError, ValueError, AttributeError) as e:
                logger.warning("MLflow: could not read %s: %s", metrics_file, e)

    # -- low level ---------------------------------------------------------------------------------------------------
    def _log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import mlflow.entities

        stamp = int(time.time() * 1000)
        batch = [mlflow.entities.Metric(k, float(v), stamp, int(step)) for k, v in metrics.items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def _log_batch(self, params: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None) -> None:
        import mlflow.entities

        params = dict(params or {})
        if params:  # mlflow params are immutable: skip those already logged (e.g. a resumed run)
            logged = self.client.get_run(self.run_id).data.params
            for key in [k for k in params if k in logged]:
                if logged[key] != params[key]:
                    logger.warning("MLflow: param %s already logged as %r, not %r", key, logged[key], params[key])
                del params[key]
        items = [mlflow.entities.Param(k, v) for k, v in params.items()]
        run_tags = [mlflow.entities.RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for start in range(0, max(len(items), 1), 100):  # mlflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100], tags=run_tags if start == 0 else [])
