"""Make the last line a user sees say what went wrong, not which wrapper carried the error.

MONAI re-raises every failure inside a config component, a config expression or a transform as a generic
``RuntimeError`` (``Failed to instantiate component ...``, ``Failed to evaluate ...``, ``applying transform <...>``)
chained ``from`` the real error. Python prints a chain innermost first, so the terminal ends with the wrapper and the
reason (which file, what is wrong) sits tens of lines above it. :func:`install` adds a ``sys.excepthook`` that prints
the usual traceback and then, when the exception is such a wrapper, the reason as the final lines::

    RuntimeError: Failed to instantiate component 'run#0' with keywords: ...

    The error above was caused by:
    BatchFailure: breast inference: 1 input(s) failed (2 processed):
      - case1 (/data/in/case1.dcm): DicomError: /data/in/case1.dcm: not a readable DICOM file (...)

Every bundle config activates it through ``"$from common.cli import command_line"`` in its ``imports`` (see
:mod:`common.cli`). :func:`describe` gives the same one-line reason to code that collects failures
(:func:`common.validation.run_each`), so inference and evaluation report one failure in the same words.
"""

from __future__ import annotations

import sys
import traceback
from types import TracebackType

#: messages of MONAI's wrapping exceptions (monai.bundle.config_item, monai.transforms.transform)
WRAPPER_PREFIXES = ("Failed to instantiate component", "Failed to evaluate", "applying transform")
#: a torch DataLoader worker re-raises the worker's exception with its formatted traceback as the message
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"
_EMBEDDED_TRACEBACK = "Traceback (most recent call last):"
CAUSE_HEADER = "The error above was caused by:"


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (``__cause__``, else ``__context__`` unless suppressed),
    outermost first, as Python would print them (innermost first) reversed."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        chain.append(current)
        seen.add(id(current))
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return chain


def is_wrapper(exc: BaseException) -> bool:
    """Whether ``exc`` is one of MONAI's generic wrappers (a ``RuntimeError`` that only says where it happened)."""
    return type(exc) is RuntimeError and str(exc).startswith(WRAPPER_PREFIXES) and (
        exc.__cause__ is not None or exc.__context__ is not None)


def root_cause(exc: BaseException) -> BaseException:
    """The outermost exception of ``exc``'s chain that is not a MONAI wrapper (``exc`` itself when it is not one).

    Outermost rather than innermost: the bundles' readers raise errors that name the file ``from`` the library's
    error that does not (e.g. ``DicomError`` from pydicom's ``InvalidDicomError``); the first non-wrapper is ours.
    """
    for item in exception_chain(exc):
        if not is_wrapper(item):
            return item
    return exc


def message_of(exc: BaseException) -> str:
    """``exc``'s message; for an error re-raised from a DataLoader worker, the last line of the worker's traceback
    (the original ``Type: message``); a message with tracebacks pasted into it ends before the first one."""
    text = str(exc)
    if _WORKER_TRACEBACK in text:
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1].strip() if lines else text
    if _EMBEDDED_TRACEBACK in text:  # e.g. MONAI's LoadImage appends every reader's traceback to its message
        text = text.split(_EMBEDDED_TRACEBACK, 1)[0].rstrip()
    return text


def describe(exc: BaseException, one_line: bool = False) -> str:
    """``"<Type>: <message>"`` of the root cause of ``exc`` (see :func:`root_cause`), e.g.
    ``"DicomError: /in/a.dcm: not a readable DICOM file (...)"``; with ``one_line``, a multi-line message has its
    lines joined by ``" "`` (for one item of a list of failures)."""
    cause = root_cause(exc)
    text = message_of(cause)
    if _WORKER_TRACEBACK not in str(cause):  # else already "Type: message" from the worker's traceback
        text = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    if one_line:
        text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text


def final_lines(exc: BaseException) -> str:
    """What :func:`excepthook` prints after the traceback: empty when the traceback's last line already gives the
    reason, else a blank line, :data:`CAUSE_HEADER` and :func:`describe` of ``exc``."""
    cause = root_cause(exc)
    if cause is exc and _WORKER_TRACEBACK not in str(exc):
        return ""
    return f"\n{CAUSE_HEADER}\n{describe(exc)}\n"


def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """Print the traceback as Python does, then the reason (:func:`final_lines`) as the last lines on stderr.

    stdout is flushed first, so on a terminal (and with both streams sent to one file) nothing logged before the
    failure appears after the reason.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    try:
        traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
        sys.stderr.write(final_lines(exc))
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - an excepthook must never hide the original error
        sys.__excepthook__(exc_type, exc, tb)


def install() -> None:
    """Make :func:`excepthook` the process's ``sys.excepthook`` (idempotent)."""
    if sys.excepthook is not excepthook:
        sys.excepthook = excepthook
