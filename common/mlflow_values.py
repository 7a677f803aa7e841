"""What a bundle's MLflow run is called and how its values are written: run names, param text, metric floats.

MLflow stores params as text (at most 6000 characters) and metrics as floats; a MONAI config hands over ints, lists,
nested dicts, ``torch.device``s and 0-d tensors. :func:`param_values` and :func:`metric_value` turn those into what
MLflow takes; :func:`default_run_name` names a run after the config files of the command line (MONAI's own default
is ``run_<time>``). ``common.tracking.MLflowRunRecorder`` uses them.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # mlflow's limit for a param value
_CONFIG_NAME = re.compile(r"([\w.-]+?)\.(?:json|yaml|yml)\b")


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
    """``"<config stems joined by +> [seed=<seed>] <time>"``, e.g. ``"train+evaluate seed=0 2025-01-31 14:02:11"``;
    ``workflow`` stands in for the stems when the command line names no config file."""
    names = config_names(argv)
    label = "+".join(names) if names else workflow
    if seed is not None:
        label += f" seed={seed}"
    return f"{label} {time.strftime('%Y-%m-%d %H:%M:%S')}"


def param_values(params: Mapping[str, Any] | None, prefix: str = "") -> dict[str, str]:
    """Flatten ``params`` into mlflow param strings: scalars and short sequences as text, nested dicts with ``.`` keys
    (``{"transfer": {"loaded": 12}}`` -> ``{"transfer.loaded": "12"}``), each cut at 6000 characters.

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
    import torch

    if value is None or isinstance(value, (bool, int, float, str, Path, torch.device)):
        return str(value)
    if isinstance(value, (list, tuple)):
        items = [_param_text(v) for v in value]
        if all(i is not None for i in items):
            return "[" + ", ".join(items) + "]"
    return None


def metric_value(value: Any) -> float | None:
    """A float for mlflow from a number or a one-element tensor/array (``torch.tensor([0.8])`` -> ``0.8``); None for
    anything else (a dict, a string, a tensor of several values)."""
    if isinstance(value, (bool, int, float)):
        return float(value)
    size = getattr(value, "numel", None)
    if callable(size) and size() == 1 or getattr(value, "size", None) == 1:  # torch.Tensor / numpy array
        return float(value.item())
    return None
