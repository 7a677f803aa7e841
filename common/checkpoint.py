"""Checkpoints that survive being killed: the best model, and a resumable state every epoch.

MONAI's ``CheckpointSaver`` keeps its best-score bookkeeping in memory, so a resumed run would overwrite the best
model with the first (possibly worse) validation after the restart; and it saves no RNG state. These two handlers
keep the state needed to continue, and write every file atomically (temporary file, then rename), with CPU tensors so
a GPU-trained checkpoint loads on a CPU-only machine.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from common.distributed import is_rank0
from common.io import atomic_path, write_json

logger = logging.getLogger(__name__)
FORMAT = "common.checkpoint/1"
_EPOCH_FILE = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or not of the expected form; the message names the file."""


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (or the network itself)."""
    return getattr(network, "module", network)


def cpu_state_dict(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The network's state dict with every tensor on the CPU, without the DDP ``module.`` prefix."""
    return {k: v.detach().cpu() for k, v in unwrap(network).state_dict().items()}


def frozen_parameters(network: torch.nn.Module) -> list[str]:
    """Names of the network's parameters with ``requires_grad=False`` (``common.transfer`` freezing), in order."""
    return [name for name, p in unwrap(network).named_parameters() if not p.requires_grad]


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a kill never leaves a partial file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def require_checkpoint(path: str | Path) -> str:
    """The one checkpoint check of every bundle's evaluate and inference, run before any data is read: ``path`` exists
    and unpickles (:func:`load_checkpoint`), so a missing or damaged file stops the run with its name.

    Evaluate calls it as the first-but-data component of ``run``, ``{"_target_":
    "common.checkpoint.require_checkpoint", "path": "$str(@ckpt_path)"}``; inference reaches the same check through
    :func:`load_network_weights` before any input is read.

    Returns:
        ``path`` as a string.

    Raises:
        CheckpointError: ``path`` does not exist (the message says to train first with the same ``--output_dir`` or
        to pass ``--ckpt_path``), or is truncated or corrupt.
    """
    load_checkpoint(path)
    return str(path)


def load_checkpoint(path: str | Path) -> Any:
    """``torch.load`` onto the CPU with a clear error for a missing, truncated or corrupt file.

    Raises:
        CheckpointError: the file does not exist or cannot be unpickled; the message names the file.
    """
    path = Path(str(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: train first (same --output_dir), or pass "
                              "--ckpt_path to an existing model.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})") from e


def load_network_weights(network: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a state dict (plain, or the ``network`` entry of a resumable checkpoint) into ``network``."""
    state = load_checkpoint(path)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        state = state["network"]
    try:
        unwrap(network).load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this network: {e}") from e
    return network


def list_resumable(checkpoint_dir: str | Path) -> list[Path]:
    """Resumable checkpoints in ``checkpoint_dir``, oldest first."""
    folder = Path(str(checkpoint_dir))
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


class ResumableCheckpoint:
    """Every epoch, save network, optimiser, scheduler, epoch/iteration, best metric and RNG states; resume from them.

    Attach as the last handler of the trainer (after the validation handler, so the best metric is current). Files
    are ``<checkpoint_dir>/checkpoint_epoch=N.pt``; the newest ``keep_last`` are kept. Only rank 0 writes.
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        validator: Engine | None = None,
        resume: bool | str = False,
        keep_last: int = 2,
    ) -> None:
        """
        Args:
            checkpoint_dir: folder of the resumable checkpoints (usually ``<output_dir>/models``).
            network, optimizer, lr_scheduler: what to save and restore.
            validator: the validation engine whose ``best_metric``/``best_metric_epoch`` are saved and restored.
            resume: False (start afresh), True (continue from the newest checkpoint in ``checkpoint_dir``, if any),
                or the path of one checkpoint to continue from.
            keep_last: how many resumable checkpoints to keep (at least 1).

        Raises:
            ValueError: ``keep_last`` < 1.
        """
        if int(keep_last) < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}.")
        self.checkpoint_dir = Path(str(checkpoint_dir))
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.validator = validator
        self.resume = resume
        self.keep_last = int(keep_last)

    def attach(self, engine: Engine) -> None:
        if self.resume not in (False, None, "", "false", "False"):
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def state(self, engine: Engine) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": FORMAT,
            "network": cpu_state_dict(self.network),
            "optimizer": self.optimizer.state_dict(),
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "frozen": frozen_parameters(self.network),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        if self.validator is not None:
            state["best_metric"] = self.validator.state.best_metric
            state["best_metric_epoch"] = self.validator.state.best_metric_epoch
        return state

    def save(self, engine: Engine) -> None:
        if not is_rank0():
            return
        path = self.checkpoint_dir / f"checkpoint_epoch={engine.state.epoch}.pt"
        save_atomic(self.state(engine), path)
        found = list_resumable(self.checkpoint_dir)
        # a later epoch than this one is left from an earlier run: it would be pruned instead of ours, and a
        # later resume would continue from it
        stale = [p for p in found if int(_EPOCH_FILE.match(p.name).group(1)) > engine.state.epoch]
        if stale:
            logger.warning("removing checkpoints of an earlier run: %s", [p.name for p in stale])
        ours = [p for p in found if p not in stale]
        for old in stale + ours[: -self.keep_last]:
            old.unlink(missing_ok=True)

    def load(self, engine: Engine) -> None:
        if isinstance(self.resume, (str, Path)) and str(self.resume).lower() not in ("true", "1"):
            path = Path(str(self.resume))
        else:
            found = list_resumable(self.checkpoint_dir)
            if not found:
                logger.warning("resume: no checkpoint in %s, starting from epoch 0", self.checkpoint_dir)
                return
            path = found[-1]
        state = load_checkpoint(path)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a resumable checkpoint (no '{FORMAT}' format tag)")
        earlier = [p.name for p in list_resumable(self.checkpoint_dir) if p != path]
        frozen_then, frozen_now = state.get("frozen"), frozen_parameters(self.network)
        if frozen_then is not None and list(frozen_then) != frozen_now:
            raise CheckpointError(
                f"{path} was trained with {len(frozen_then)} frozen parameters but this run freezes {len(frozen_now)} "
                f"(only then: {sorted(set(frozen_then) - set(frozen_now))[:5]}, only now: "
                f"{sorted(set(frozen_now) - set(frozen_then))[:5]}): resume with the same --freeze and "
                f"--pretrained_ckpt")
        try:
            unwrap(self.network).load_state_dict(state["network"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.lr_scheduler is not None and "lr_scheduler" in state:
                self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path} does not fit this run ({e}); earlier checkpoints: {earlier}") from e
        if state["epoch"] > engine.state.max_epochs:
            raise CheckpointError(f"{path} is at epoch {state['epoch']}, beyond --epochs {engine.state.max_epochs}")
        engine.state.epoch = state["epoch"]
        engine.state.iteration = state["iteration"]
        if self.validator is not None and "best_metric" in state:
            self.validator.state.best_metric = state["best_metric"]
            self.validator.state.best_metric_epoch = state["best_metric_epoch"]
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "numpy" in rng:
            np.random.set_state(rng["numpy"])
        if "python" in rng:
            random.setstate(rng["python"])
        logger.info("resumed from %s at epoch %d of %d", path, engine.state.epoch, engine.state.max_epochs)


_SETTINGS_MISSING_LOGGED: set[str] = set()


def settings_path(ckpt_path: str | Path) -> Path:
    """The JSON file of training settings beside a model checkpoint: ``models/model.pt`` -> ``models/model.json``."""
    return Path(str(ckpt_path)).with_suffix(".json")


def best_network(network: torch.nn.Module, ckpt_path: str | Path, device: Any = "cpu") -> torch.nn.Module:
    """A copy of the training ``network`` (unwrapped from DDP) with the weights of ``ckpt_path``, on ``device``, in
    eval mode: what the end-of-training fitters (temperature/threshold, conformal quantiles) measure, leaving the
    trainer's network untouched.

    Raises:
        CheckpointError: the checkpoint is missing, damaged or does not fit the network.
    """
    import copy

    return load_network_weights(copy.deepcopy(unwrap(network)), ckpt_path).to(device).eval()


def record_settings(ckpt_path: str | Path, updates: dict[str, Any]) -> Path:
    """Add ``updates`` to the training settings beside ``ckpt_path`` (``model.json``, created when absent; written
    atomically) and return its path: how what is fitted after training travels with the model."""
    path = settings_path(ckpt_path)
    settings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    settings.update(updates)
    write_json(path, settings)
    return path


class BestModelFitter:
    """Base of the ignite handlers that, when training completes, fit something on the validation split with the
    best model and record it beside that model (``model.json``, see :func:`record_settings`):
    ``common.calibration.CalibrationFitter`` (temperature, threshold), cardiac's ``ConformalCalibrator`` and brain's
    ``PostprocessingFitter`` (region thresholds, minimum component volumes).

    Attach to the trainer. At ``COMPLETED``, rank 0 calls :meth:`fit` with :func:`best_network` (the training network
    is not modified) and keeps its return value in ``result``; other ranks do nothing and return ``{}``.

    Raises:
        CheckpointError: the best model is missing or does not fit the network.
    """

    def __init__(self, ckpt_path: str | Path, network: torch.nn.Module, device: Any = "cpu") -> None:
        self.ckpt_path, self.network, self.device = Path(str(ckpt_path)), network, device
        self.result: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def fit(self, network: torch.nn.Module) -> dict[str, Any]:
        """Measure on the validation split with ``network`` (the best model, eval mode), record, return the result."""
        raise NotImplementedError

    def __call__(self, engine: Engine | None = None) -> dict[str, Any]:
        if not is_rank0():
            return {}
        self.result = self.fit(best_network(self.network, self.ckpt_path, self.device))
        return self.result


def model_setting(ckpt_path: str | Path, key: str, default: Any) -> Any:
    """A setting recorded at training time beside ``ckpt_path`` (see :class:`BestModelSaver`), or ``default`` when
    the checkpoint has no settings file (e.g. one trained elsewhere) or the file does not record ``key``.

    Evaluation and inference use it so that preprocessing matches what the network was trained with, without the
    user having to repeat the training flags: every bundle's ``evaluate.json`` and ``inference.json`` define each
    recorded id as ``"$common.checkpoint.model_setting(@ckpt_path, '<id>', <default>)"``, and a value given on the
    command line replaces that expression (the command line wins), as nnU-Net's plans travel with its model.

    Raises:
        CheckpointError: the settings file exists but is not a JSON object.
    """
    path = settings_path(ckpt_path)
    if not path.is_file():
        if str(path) not in _SETTINGS_MISSING_LOGGED:
            _SETTINGS_MISSING_LOGGED.add(str(path))
            logger.warning("no training settings %s beside the checkpoint: evaluate/inference use the config's "
                           "values (pass the training flags again if the model was trained with others)", path)
        return default
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"training settings {path} are unreadable ({e}); delete the file or retrain") from e
    if not isinstance(settings, dict):
        raise CheckpointError(f"training settings {path} must be a JSON object, got {type(settings).__name__}")
    return settings.get(key, default)


class BestModelSaver:
    """Save the network's state dict (CPU tensors) whenever the validator's key metric reaches a new best, or, with
    ``selection="final"``, at every validation, so that ``model.pt`` is the model of the last epoch (training always
    ends with a validation): nnU-Net's choice of the final checkpoint, for a recipe whose learning rate decays to
    near zero and whose validation split is too small to rank models (the brain demo: 5 cases).

    Attach to the validation engine; MONAI's workflow updates ``best_metric_epoch`` before user handlers run.
    ``settings`` (JSON-serialisable), when given, are written beside the model as ``<stem>.json`` (see
    :func:`model_setting`): the state dict stays a plain one that MONAI's ``CheckpointLoader`` and ``ckpt_export`` load.

    Raises:
        ValueError: ``selection`` is neither "best" nor "final".
    """

    def __init__(self, save_dir: str | Path, network: torch.nn.Module, filename: str = "model.pt",
                 settings: dict[str, Any] | None = None, selection: str = "best") -> None:
        if selection not in ("best", "final"):
            raise ValueError(f"model selection must be 'best' or 'final', got {selection!r}.")
        self.path = Path(str(save_dir)) / filename
        self.network = network
        self.settings = None if settings is None else dict(settings)
        self.selection = selection

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        new_best = engine.state.best_metric_epoch == engine.state.epoch
        if is_rank0() and (new_best or self.selection == "final"):
            if self.settings is not None:
                write_json(settings_path(self.path), self.settings)
            save_atomic(cpu_state_dict(self.network), self.path)
            if self.selection == "final":
                logger.info("saved the model of epoch %d (selection 'final'; best %s=%.4f at epoch %d) to %s",
                            engine.state.epoch, engine.state.key_metric_name, float(engine.state.best_metric),
                            engine.state.best_metric_epoch, self.path)
            else:
                logger.info("saved best model (%s=%.4f, epoch %d) to %s", engine.state.key_metric_name,
                            float(engine.state.best_metric), engine.state.epoch, self.path)
