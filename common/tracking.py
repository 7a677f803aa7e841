"""Complete what MONAI's ``--tracking mlflow`` switch logs: hyper-parameters, per-epoch curves, artifacts, run name.

MONAI 1.6's switch (``monai.bundle.workflows.ConfigWorkflow.patch_bundle_tracking``) appends an ``MLFlowHandler`` to
``train#handlers``, ``validate#handlers`` and the evaluate workflow's ``handlers``. That handler sets the experiment
(``experiment_name``), opens the run, logs the params ``max_epochs``/``epoch_length``, the per-iteration
``train_loss`` (and ``lr_group_<i>``), every ``engine.state.metrics`` entry per epoch under its plain name (the
validator's metrics, and the evaluate metrics that ``common.handlers.EvaluationWriter`` puts there) and the
executed config; this module does none of that again. Two MONAI bugs are worked around in
``common.monai_workarounds``: the executed config it drops when ``--output_dir`` is on the command line, and the
validator's handler joining the oldest unfinished run.

:class:`MLflowRunRecorder` is attached by every bundle next to MONAI's handler. It never opens a run of its own: at
``STARTED`` it looks for the ``MLFlowHandler`` registered on the same engine and, when there is none (tracking off) or
on a rank other than 0, it detaches itself and costs nothing more. Otherwise it adds, into that handler's run:

* tags ``workflow`` (train/evaluate), ``config_files``, ``output_dir``, ``key_metric``; ``bundle_workflow`` (the
  ``metadata.json`` workflow that the command line's config files belong to, ``common.workflows``) and
  ``bundle_workflows`` (every declared workflow, in order, comma-separated), so that ``common.report`` gives each
  workflow of a bundle its own section; and, when neither the config nor the command line set MONAI's
  ``run_name``, a run name that says config, seed and time
  (``common.mlflow_values.default_run_name``, e.g. ``train+evaluate seed=0 2025-01-31 14:02:11``);
* params: every value of the ``params`` dict the config passes (``common.mlflow_values.param_values``),
  ``dataset_size`` when given, and the monai/torch/python versions;
* metrics: ``train_loss_epoch`` (mean of the loss MONAI's handler reads with its ``output_transform``, per epoch)
  and every validation metric as ``val_<name>``, one point per validation epoch (step = training epoch), plus
  ``val_best_<key metric>`` at the end;
* artifacts at ``COMPLETED``: ``metadata.json``, ``metrics.json`` (when written by this run), the best checkpoint
  (under ``models/``), at most 12 PNGs of ``overlay_dir`` written by this run (under ``overlays/``), and the executed
  config when MONAI drops it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from common.distributed import is_rank0
from common.mlflow_values import config_names, default_run_name, metric_value, param_values
from common.monai_workarounds import (
    executed_config_path,
    monai_logs_itself,
    process_start_time,
    share_run_with_validator,
)

logger = logging.getLogger(__name__)

VAL_PREFIX = "val_"  # validation metrics: val_<name> (DESIGN.md)
MAX_OVERLAYS = 12  # overlay PNGs uploaded per run, the first by name


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


def bundle_workflow_tags(metadata_file: str | os.PathLike | None, step: str, config_files: list[str]) -> dict[str, str]:
    """``{"bundle_workflow": <name>, "bundle_workflows": "<first>,<second>,..."}`` for a run of ``step`` (train or
    evaluate) started with ``config_files`` (stems or names), from the ``workflows`` that the bundle's
    ``metadata_file`` declares (``common.workflows.workflow_of_configs``); ``{}`` when there is no metadata file, the
    step is not a workflow step, or the files fit no single declared workflow (``common.report`` then counts the run as
    the bundle's first workflow). A malformed ``metadata.json`` is logged as a warning, never stops the run."""
    from common.workflows import STEPS, bundle_workflows, workflow_of_configs

    if metadata_file is None or step not in STEPS:
        return {}
    path = Path(str(metadata_file))
    try:
        flows = bundle_workflows(path.parent.parent, require_files=False)
    except (OSError, ValueError) as e:
        logger.warning("MLflow: no bundle_workflow tag, cannot read the workflows of %s: %s", path, e)
        return {}
    flow = workflow_of_configs(flows, step, config_files)
    if flow is None:
        logger.warning("MLflow: no bundle_workflow tag, config files %s fit none (or several) of the workflows %s "
                       "declared in %s", config_files, [f.name for f in flows], path)
        return {}
    return {"bundle_workflow": flow.name, "bundle_workflows": ",".join(f.name for f in flows)}


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
        checkpoint: str | os.PathLike | bool | None = True,
        overlay_dir: str | os.PathLike | None = None,
        workflow: str | None = None,
    ) -> None:
        """
        Args:
            output_dir: the workflow's ``output_dir`` (where MONAI writes ``config_<time>.json``, the evaluate
                workflow ``metrics.json`` and training ``models/model.pt``).
            params: the run's hyper-parameters, e.g. ``{"learning_rate": "@learning_rate", "epochs": "@epochs"}``.
            dataset_size: number of training (or evaluated) cases, logged as param ``dataset_size``.
            validator: the training's validation engine; its metrics are logged as ``val_<name>``.
            metadata_file: the bundle's ``configs/metadata.json``, logged as an artifact.
            checkpoint: the best checkpoint to log: True for ``<output_dir>/models/model.pt``, a path, or
                False/None for none (evaluate runs).
            overlay_dir: folder of prediction overlay PNGs (``common.overlays``) to log under ``overlays/``.
            workflow: ``"train"`` or ``"evaluate"`` tag; by default from the engine type.
        """
        self.output_dir = Path(str(output_dir)) if output_dir is not None else None
        self.params = dict(params or {})
        self.dataset_size = dataset_size
        self.validator = validator
        self.metadata_file = Path(str(metadata_file)) if metadata_file else None
        if checkpoint is True:
            self.checkpoint = self.output_dir / "models" / "model.pt" if self.output_dir is not None else None
        elif checkpoint in (False, None, ""):
            self.checkpoint = None
        else:
            self.checkpoint = Path(str(checkpoint))
        self.overlay_dir = Path(str(overlay_dir)) if overlay_dir else None
        self.workflow = workflow
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
            share_run_with_validator(mlf, find_mlflow_handler(self.validator))
            if not self.validator.has_event_handler(self.validation_completed, Events.EPOCH_COMPLETED):
                self.validator.add_event_handler(Events.EPOCH_COMPLETED, self.validation_completed)

    def _open(self, engine: Engine, mlf: Any) -> None:
        """Let MONAI's handler open (or find) its run under our default name, then add our params and tags."""
        workflow = self.workflow or ("train" if self._is_trainer(engine) else "evaluate")
        if mlf.cur_run is None:
            if mlf.run_name is None:
                mlf.run_name = default_run_name(workflow, seed=self.params.get("seed"))
            mlf.start(engine)  # idempotent: MONAI's own STARTED call then finds this run
        self.mlflow_handler, self.client, self.run_id = mlf, mlf.client, mlf.cur_run.info.run_id
        self.workflow = workflow
        params = self._all_params()
        mlf._delete_exist_param_in_dict(params)  # MONAI's own param logging: a re-joined run keeps its params
        mlf._log_params(params)
        tags = {"workflow": workflow, "config_files": "+".join(config_names()) or "unknown"}
        if self.output_dir is not None:
            tags["output_dir"] = str(self.output_dir)
        tags.update(bundle_workflow_tags(self.metadata_file, workflow, config_names()))
        self._set_tags(tags)
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

    @staticmethod
    def _is_trainer(engine: Engine) -> bool:
        from monai.engines import Trainer

        return isinstance(engine, Trainer)

    # -- events ------------------------------------------------------------------------------------------------------
    def iteration_completed(self, engine: Engine) -> None:
        """Keep the loss that MONAI's handler logs as ``train_loss`` (read by its own ``output_transform``)."""
        if not self.active:
            return
        loss = metric_value(self.mlflow_handler.output_transform(engine.state.output))
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
        metrics = {f"{VAL_PREFIX}{k}": metric_value(v) for k, v in validator.state.metrics.items()}
        self._log_metrics({k: v for k, v in metrics.items() if v is not None}, step=validator.state.epoch)

    def completed(self, engine: Engine) -> None:
        """Log the best validation value and the artifacts of this run."""
        if not self.active:
            return
        if self.validator is not None:
            state = self.validator.state
            best, name = metric_value(getattr(state, "best_metric", None)), getattr(state, "key_metric_name", None)
            if name and best is not None and best > -1:
                self._log_metrics({f"{VAL_PREFIX}best_{name}": best},
                                  step=int(getattr(state, "best_metric_epoch", 0) or 0))
        self.log_artifacts()

    # -- artifacts ---------------------------------------------------------------------------------------------------
    def artifacts(self) -> list[tuple[Path, str | None]]:
        """``(file, artifact folder)`` pairs this run logs at completion."""
        since = self.started_at - 1.0
        found: list[tuple[Path, str | None]] = []
        config = executed_config_path(self.mlflow_handler, self.output_dir, since=process_start_time() - 1.0)
        if config is not None and not monai_logs_itself(self.mlflow_handler, config):
            found.append((config, None))
        if self.metadata_file is not None and self.metadata_file.is_file():
            found.append((self.metadata_file, None))
        metrics = self._metrics_file()
        if metrics is not None:
            found.append((metrics, None))
        if self.checkpoint is not None and self.checkpoint.is_file():
            found.append((self.checkpoint, "models"))
        if self.overlay_dir is not None and self.overlay_dir.is_dir():
            pngs = sorted(p for p in self.overlay_dir.rglob("*.png") if p.stat().st_mtime >= since)
            found.extend((p, "overlays") for p in pngs[:MAX_OVERLAYS])
        return found

    def log_artifacts(self) -> None:
        for path, folder in self.artifacts():
            try:
                self.client.log_artifact(self.run_id, str(path), artifact_path=folder)
            except Exception as e:  # noqa: BLE001 - an upload failure must not discard a finished training
                logger.warning("MLflow: could not log artifact %s: %s", path, e)
        metrics = self._metrics_file()
        if metrics is not None:
            try:
                key = json.loads(metrics.read_text()).get("key_metric")
                if isinstance(key, str):
                    self._set_tags({"key_metric": key})
            except (OSError, ValueError, AttributeError) as e:
                logger.warning("MLflow: could not read %s: %s", metrics, e)

    def _metrics_file(self) -> Path | None:
        """``<output_dir>/metrics.json`` when this run wrote it (an evaluate run)."""
        path = self.output_dir / "metrics.json" if self.output_dir is not None else None
        return path if path is not None and path.is_file() and path.stat().st_mtime >= self.started_at - 1.0 else None

    # -- low level ---------------------------------------------------------------------------------------------------
    def _log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Through the client, not MONAI's ``_log_metrics``: at ``COMPLETED`` MONAI's handler has closed its run."""
        import mlflow.entities

        stamp = int(time.time() * 1000)
        batch = [mlflow.entities.Metric(k, float(v), stamp, int(step)) for k, v in metrics.items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def _set_tags(self, tags: Mapping[str, str]) -> None:
        import mlflow.entities

        self.client.log_batch(self.run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()])
