"""Transfer learning: start a training from weights trained elsewhere, freeze part of the network, and give the loaded
parameters their own learning rate (discriminative fine-tuning).

Every bundle's ``train.json`` exposes the same three ids (docs/fine-tuning.md):

* ``pretrained_ckpt`` (``null``): a plain state dict (e.g. a Model Zoo bundle's ``models/model.pt``, or our own
  ``models/model.pt``) or one of our resumable checkpoints (``common.checkpoint.ResumableCheckpoint``, whose
  ``network`` entry is used). Tensors are copied by name where the shapes match, with MONAI's
  ``monai.networks.utils.copy_model_state``; the log lists how many were loaded and which were skipped and why.
* ``freeze`` (``[]``): parameter-name prefixes to freeze, matched on whole dotted components (``features.0`` freezes
  ``features.0.conv.weight`` but not ``features.10.conv.weight``), or the name of a preset of the bundle
  (``FREEZE_PRESETS`` in the bundle's ``scripts/networks.py``; every bundle defines ``"encoder"``).
* ``pretrained_lr_scale`` (``1.0``): learning-rate factor for the loaded parameters that stay trainable.

Frozen parameters get ``requires_grad=False`` and are left out of the optimiser (:func:`param_groups`); the
BatchNorm/InstanceNorm modules inside a frozen part stay in eval mode during training, so their running statistics
do not move. MONAI's ``SupervisedTrainer`` calls ``network.train()`` inside every iteration (monai/engines/trainer.py,
``_iteration``), after ignite's ``ITERATION_STARTED`` handlers have run, so a handler cannot undo it; instead the
frozen norm modules' own ``train`` method is replaced by one that keeps them in eval mode (as the reference
implementations of frozen-BN fine-tuning, e.g. torchvision's ``FrozenBatchNorm2d``, keep the statistics fixed).

The network must be prepared before it is wrapped in ``DistributedDataParallel`` (see each ``multi_gpu_train.json``).
"""

from __future__ import annotations

import importlib
import logging
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.networks.utils import copy_model_state
from torch import nn

from common.checkpoint import FORMAT, CheckpointError, load_checkpoint, unwrap

logger = logging.getLogger(__name__)
Presets = Mapping[str, "Sequence[str] | Callable[[nn.Module], Sequence[str]]"] | str
_NORMS = (nn.modules.batchnorm._NormBase,)  # BatchNorm1/2/3d, SyncBatchNorm, InstanceNorm1/2/3d


class TransferError(ValueError):
    """A ``freeze`` prefix or preset that matches nothing, or a freeze that leaves nothing to train."""


@dataclass
class TransferReport:
    """What :func:`prepare` did to a network; kept on the (unwrapped) network as ``transfer_report``.

    Attributes:
        pretrained_ckpt: the file loaded from, or None.
        loaded: names of the network's state-dict entries copied from the checkpoint.
        skipped: ``{name: reason}`` for the entries not copied: ``missing`` (in the network, not in the checkpoint),
            ``unexpected`` (in the checkpoint, not in the network), ``shape mismatch: checkpoint [..] vs network [..]``.
        frozen: names of the parameters frozen (``requires_grad=False``).
        frozen_norms: names of the BatchNorm/InstanceNorm modules kept in eval mode.
    """

    pretrained_ckpt: str | None = None
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    frozen: list[str] = field(default_factory=list)
    frozen_norms: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts (and a shortened list of skipped names) for MLflow params: flat, JSON-serialisable."""
        reasons = [r.split(":")[0] for r in self.skipped.values()]
        skipped = ", ".join(f"{k} ({v})" for k, v in self.skipped.items())
        return {"loaded": len(self.loaded), "skipped_missing": reasons.count("missing"),
                "skipped_unexpected": reasons.count("unexpected"),
                "skipped_shape_mismatch": reasons.count("shape mismatch"), "frozen": len(self.frozen),
                "skipped": skipped if len(skipped) <= 480 else skipped[:477] + "..."}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The network weights in ``path``: a plain state dict, a resumable checkpoint of ``common.checkpoint`` (its
    ``network`` entry), or a dict holding the state dict under ``state_dict``/``model``/``network`` (MONAI's
    ``CheckpointSaver`` layout). A ``module.`` prefix on every key (a DDP-wrapped network's state) is removed.

    Raises:
        CheckpointError: the file does not exist, cannot be unpickled, or holds no tensors by name; the message names
            the file.
    """
    state = load_checkpoint(path)
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if isinstance(state, Mapping) and state.get("format") == FORMAT:
        state = state.get("network")
    elif isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model", "network"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)} \
        if isinstance(state, Mapping) else {}
    if not tensors:
        raise CheckpointError(f"pretrained checkpoint {path} is not a checkpoint: expected a state dict (name -> "
                              f"tensor) or a resumable checkpoint, got {type(state).__name__} without tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def load_pretrained(network: nn.Module, path: str | Path) -> TransferReport:
    """Copy the tensors of ``path`` into ``network`` by name where the shapes match (``copy_model_state``).

    Returns:
        A :class:`TransferReport` with the loaded and skipped names (logged too).

    Raises:
        CheckpointError: see :func:`read_state_dict`, or no tensor of the checkpoint matches the network by name and
            shape (e.g. a checkpoint of another network); the message names the file and a few names of both.
    """
    source = read_state_dict(path)
    target = unwrap(network).state_dict()
    skipped: dict[str, str] = {}
    for name, value in target.items():
        if name not in source:
            skipped[name] = "missing"
        elif tuple(source[name].shape) != tuple(value.shape):
            skipped[name] = f"shape mismatch: checkpoint {list(source[name].shape)} vs network {list(value.shape)}"
    skipped.update({name: "unexpected" for name in source if name not in target})
    if not any(name not in skipped for name in target):
        raise CheckpointError(
            f"pretrained checkpoint {path} matches no tensor of this network by name and shape (checkpoint has "
            f"{sorted(source)[:4]}..., network has {sorted(target)[:4]}...): is it a checkpoint of this bundle's "
            f"network with the same width (e.g. --init_filters/--channels)?")
    _, loaded, _ = copy_model_state(unwrap(network), source, inplace=True)
    report = TransferReport(pretrained_ckpt=str(path), loaded=list(loaded), skipped=skipped)
    logger.info("pretrained %s: loaded %d of %d tensors of the network; skipped %d%s", path, len(loaded),
                len(target), len(skipped), "".join(f"\n  skipped {k}: {v}" for k, v in skipped.items()))
    if len(loaded) < len(target) / 2:
        logger.warning("pretrained %s: only %d of %d tensors of the network fit (%d shape mismatches): is it a "
                       "checkpoint of this network with the same width (e.g. --init_filters/--channels)?", path,
                       len(loaded), len(target), sum(r.startswith("shape") for r in skipped.values()))
    return report


def _matches(name: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def resolve_freeze(network: nn.Module, freeze: str | Iterable[str] | None, presets: Presets | None = None
                   ) -> list[str]:
    """The parameter-name prefixes that ``freeze`` stands for: presets expanded, each prefix checked.

    Raises:
        TransferError: a prefix (or a preset's prefix) matches no parameter; the message lists the network's
            top-level names and the presets.
    """
    items = [freeze] if isinstance(freeze, str) else list(freeze or [])
    net = unwrap(network)
    names = [n for n, _ in net.named_parameters()]
    presets = presets_of(presets)
    prefixes: list[str] = []
    for item in items:
        item = str(item).strip()
        if item in presets:
            entry = presets[item]
            expanded = list(entry(net) if callable(entry) else entry)
            prefixes += expanded
            bad = [p for p in expanded if not any(_matches(n, p) for n in names)]
            if bad:
                raise TransferError(f"freeze preset '{item}' names {bad}, which match no parameter of "
                                    f"{type(net).__name__}; valid top-level names: {_top_level(names)}")
        elif any(_matches(n, item) for n in names):
            prefixes.append(item)
        else:
            raise TransferError(f"freeze prefix '{item}' matches no parameter of {type(net).__name__}; valid "
                                f"top-level names: {_top_level(names)}, presets: {sorted(presets)}")
    return prefixes


def presets_of(presets: Presets | None) -> dict[str, Any]:
    """``presets`` as a dict: a mapping as is, or the dotted name of a module whose ``FREEZE_PRESETS`` it is (train.json
    passes ``'scripts.networks'``, the bundle's network module, imported here so the config needs no import line).

    Raises:
        TransferError: the module cannot be imported or has no ``FREEZE_PRESETS`` mapping.
    """
    if presets is None:
        return {}
    if isinstance(presets, str):
        try:
            module = importlib.import_module(presets)
        except ImportError as e:
            raise TransferError(f"freeze presets: cannot import {presets} ({e})") from e
        found = getattr(module, "FREEZE_PRESETS", None)
        if not isinstance(found, Mapping):
            raise TransferError(f"freeze presets: {module.__file__} defines no FREEZE_PRESETS mapping")
        return dict(found)
    return dict(presets)


def _top_level(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(n.split(".")[0] for n in names))


def _train_frozen(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train`` of a frozen norm module: always eval mode, so its running statistics stay as loaded."""
    return nn.Module.train(self, False)


def freeze_parameters(network: nn.Module, prefixes: Sequence[str]) -> tuple[list[str], list[str]]:
    """Set ``requires_grad=False`` on the parameters under ``prefixes``, and keep the BatchNorm/InstanceNorm modules
    under them in eval mode whatever ``network.train()`` says.

    Returns:
        (names of the frozen parameters, names of the norm modules kept in eval mode).
    """
    net = unwrap(network)
    frozen = []
    for name, param in net.named_parameters():
        if any(_matches(name, p) for p in prefixes):
            param.requires_grad_(False)
            frozen.append(name)
    norms = []
    for name, module in net.named_modules():
        if isinstance(module, _NORMS) and name and any(_matches(name, p) for p in prefixes):
            module.train = types.MethodType(_train_frozen, module)
            module.eval()
            norms.append(name)
    return frozen, norms


def prepare(network: nn.Module, pretrained_ckpt: str | Path | None = None, freeze: str | Iterable[str] | None = (),
            presets: Presets | None = None) -> nn.Module:
    """Load ``pretrained_ckpt`` into ``network`` by name (:func:`load_pretrained`) and freeze ``freeze``
    (:func:`resolve_freeze`, :func:`freeze_parameters`); the train.json entry point (``network_init``).

    Apply to the bare network, before ``.to(device)`` or a DDP wrapper. The :class:`TransferReport` is kept on the
    network as ``transfer_report`` (used by :func:`param_groups` and :func:`summary`).

    Returns:
        ``network`` itself.

    Raises:
        CheckpointError: the checkpoint is missing, unreadable, not a checkpoint, or matches no tensor.
        TransferError: a freeze prefix matches nothing, or every parameter would be frozen.
    """
    net = unwrap(network)
    ckpt = None if pretrained_ckpt in (None, "", "null", "None") else pretrained_ckpt
    report = load_pretrained(net, ckpt) if ckpt is not None else TransferReport()
    prefixes = resolve_freeze(net, freeze, presets)
    if prefixes and ckpt is None:
        logger.warning("freeze %s without pretrained_ckpt: the frozen part keeps its random initialisation", prefixes)
    if prefixes:
        report.frozen, report.frozen_norms = freeze_parameters(net, prefixes)
        total = sum(1 for _ in net.parameters())
        if len(report.frozen) == total:
            raise TransferError(f"freeze {list(freeze) if not isinstance(freeze, str) else [freeze]} freezes every "
                                f"parameter of {type(net).__name__}: nothing left to train")
        logger.info("froze %d of %d parameters (%s); %d norm modules kept in eval mode", len(report.frozen), total,
                    ", ".join(prefixes), len(report.frozen_norms))
    net.transfer_report = report
    return network


def report_of(network: nn.Module) -> TransferReport:
    """The network's :class:`TransferReport` (an empty one when :func:`prepare` was not applied)."""
    return getattr(unwrap(network), "transfer_report", None) or TransferReport()


def summary(network: nn.Module) -> dict[str, Any]:
    """:meth:`TransferReport.summary` of the network (MLflow params ``transfer.*``)."""
    return report_of(network).summary()


def param_groups(network: nn.Module, lr: float, pretrained_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Optimiser parameter groups: trainable parameters only (frozen ones left out); with a pretrained checkpoint and
    ``pretrained_lr_scale != 1``, the loaded parameters in a first group with ``lr * pretrained_lr_scale`` and the
    others (e.g. a new head) in a second group with ``lr``.

    Deterministic for a given network, checkpoint and ``freeze``, so a resumed run builds the same groups and the
    optimiser state of its resumable checkpoint fits.

    Raises:
        TransferError: ``pretrained_lr_scale`` is negative or not a number, or no parameter is trainable.
    """
    try:
        scale = float(pretrained_lr_scale)
    except (TypeError, ValueError) as e:
        raise TransferError(f"pretrained_lr_scale must be a number, got {pretrained_lr_scale!r}") from e
    if not scale >= 0:
        raise TransferError(f"pretrained_lr_scale must be >= 0, got {pretrained_lr_scale!r}")
    net = unwrap(network)
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    if not trainable:
        raise TransferError(f"no trainable parameter in {type(net).__name__}: check freeze")
    report = report_of(net)
    if report.pretrained_ckpt is None and scale != 1.0:
        logger.warning("pretrained_lr_scale %s has no effect without pretrained_ckpt", scale)
    if report.pretrained_ckpt is None or scale == 1.0:
        return [{"params": [p for _, p in trainable], "lr": float(lr)}]
    loaded = set(report.loaded)
    groups = [{"params": [p for n, p in trainable if n in loaded], "lr": float(lr) * scale},
              {"params": [p for n, p in trainable if n not in loaded], "lr": float(lr)}]
    return [g for g in groups if g["params"]]


# ---------------------------------------------------------------------------------- "encoder" presets of MONAI nets
def segresnet_encoder(network: nn.Module) -> list[str]:
    """Encoder of a MONAI ``SegResNet``: the initial convolution and the down-sampling stages."""
    return ["convInit", "down_layers"]


def unet_encoder(network: nn.Module) -> list[str]:
    """Encoder of a MONAI ``UNet``: each level's down-sampling block and the bottom block (not the up path).

    MONAI's UNet nests ``Sequential(down, SkipConnection(sub), up)`` with ``sub`` the next level or the bottom block,
    so the prefixes are ``model.0``, ``model.1.submodule.0``, ... and the innermost ``...submodule``.
    """
    from monai.networks.layers import SkipConnection

    net = unwrap(network)
    level, prefix, found = net.model, "model", []
    while isinstance(level, nn.Sequential) and len(level) == 3 and isinstance(level[1], SkipConnection):
        found.append(f"{prefix}.0")
        level, prefix = level[1].submodule, f"{prefix}.1.submodule"
    found.append(prefix)
    return found
