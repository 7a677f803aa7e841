"""The root cause of a failed bundle command as the last line the user sees.

MONAI's config parser wraps every error raised while it evaluates an expression or instantiates a component in its
own ``RuntimeError("Failed to evaluate ConfigExpression: ...")`` / ``"Failed to instantiate component ..."`` (see
``monai/bundle/config_item.py`` and ``monai/utils/module.py``), so a ``monai.bundle run`` that stops on bad input
ends with MONAI's wrapper, not with the message naming the offending file. :func:`install` chains a
``sys.excepthook`` that prints the usual traceback and then the innermost cause (``__cause__``/``__context__``) as one
last line ``ERROR: <type>: <message>``. ``import common`` (every bundle config's first import) installs it.
"""

from __future__ import annotations

import sys
from types import TracebackType

_INSTALLED = False


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of ``error``'s ``__cause__``/``__context__`` chain (``error`` itself if none)."""
    seen = {id(error)}
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def _hook(previous):
    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        previous(kind, error, tb)
        cause = root_cause(error)
        if cause is not error and not isinstance(cause, KeyboardInterrupt):
            message = " ".join(str(cause).split()) or "(no message)"
            print(f"ERROR: {type(cause).__name__}: {message}", file=sys.stderr, flush=True)
    return hook


def install() -> None:
    """Chain the hook onto ``sys.excepthook`` once per interpreter."""
    global _INSTALLED
    if not _INSTALLED:
        sys.excepthook = _hook(sys.excepthook)
        _INSTALLED = True
