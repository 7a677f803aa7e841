"""Shared library of the bundle collection.

Submodules load on first use (PEP 562), so ``common.transfer.X`` in a config expression resolves even where a merged
config (evaluate.json, multi_gpu_train.json) replaces train.json's ``imports`` list with one that does not name it.
"""

import importlib as _importlib

from common import errors as _errors

_errors.install()  # bundle commands end with the root cause of a failure (common/errors.py)


def __getattr__(name: str):
    if name.startswith("_"):
        raise AttributeError(name)
    try:
        return _importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
