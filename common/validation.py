"""Check data before spending compute, and report every problem at once.

nnU-Net's ``verify_dataset_integrity`` checks geometry, labels and case counts before planning; every bundle's
train, evaluate and inference workflows do the same here, but collect all problems (naming case and file) into one
error instead of stopping at the first ``assert``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from common.errors import describe

logger = logging.getLogger(__name__)
T = TypeVar("T")


class DatasetError(ValueError):
    """The data failed validation; the message lists every problem with its case and file."""

    def __init__(self, subject: str, problems: list[tuple[str, str]]) -> None:
        self.subject = subject
        self.problems = list(problems)
        lines = "\n".join(f"  - {where}: {what}" for where, what in self.problems)
        super().__init__(f"{subject}: {len(self.problems)} problem(s) found, nothing was run:\n{lines}")


class BatchFailure(RuntimeError):
    """Some items of a batch job failed; the others were processed. The message names every failed item."""

    def __init__(self, what: str, failures: list[tuple[str, str]], done: int) -> None:
        self.failures = list(failures)
        self.done = done
        lines = "\n".join(f"  - {name}: {reason}" for name, reason in self.failures)
        super().__init__(f"{what}: {len(self.failures)} input(s) failed ({done} processed):\n{lines}")


class Problems:
    """Collects ``(where, what)`` problems about a dataset or an input folder."""

    def __init__(self, subject: str) -> None:
        """``subject`` names what is checked, e.g. ``"brain dataset /data/BraTS2021"``."""
        self.subject = subject
        self.items: list[tuple[str, str]] = []

    def add(self, where: str | os.PathLike, what: str) -> None:
        """Record that ``where`` (a file or case) has problem ``what``."""
        self.items.append((str(where), what))

    def check(self, condition: bool, where: str | os.PathLike, what: str) -> bool:
        """Record ``what`` at ``where`` unless ``condition`` holds; return ``condition``."""
        if not condition:
            self.add(where, what)
        return bool(condition)

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:  # a Problems object is truthy when problems were found
        return bool(self.items)

    def raise_if_any(self) -> None:
        """Raise :class:`DatasetError` listing every problem, if any was recorded."""
        if self.items:
            raise DatasetError(self.subject, self.items)


def check_file(path: str | os.PathLike, problems: Problems, what: str = "file") -> bool:
    """Record a problem unless ``path`` is an existing, non-empty, readable regular file."""
    path = Path(str(path))
    if not path.exists():
        problems.add(path, f"{what} is missing")
        return False
    if not path.is_file():
        problems.add(path, f"{what} is not a regular file")
        return False
    if path.stat().st_size == 0:
        problems.add(path, f"{what} is empty (0 bytes)")
        return False
    if not os.access(path, os.R_OK):
        problems.add(path, f"{what} is not readable (permissions)")
        return False
    return True


def check_dir(path: str | os.PathLike, problems: Problems, what: str = "folder", override: str = "") -> bool:
    """Record a problem unless ``path`` is an existing folder; ``override`` names the CLI option to fix it."""
    path = Path(str(path))
    if not path.is_dir():
        hint = f" (set {override})" if override else ""
        problems.add(path, f"{what} does not exist{hint}")
        return False
    return True


def check_finite(array: Any, where: str | os.PathLike, problems: Problems) -> bool:
    """Record a problem when ``array`` holds NaN or infinite values."""
    data = np.asarray(array)
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        problems.add(where, f"{bad} NaN/Inf value(s)")
        return False
    return True


def check_labels(array: Any, allowed: Iterable[int], where: str | os.PathLike, problems: Problems) -> bool:
    """Record a problem when ``array`` holds values outside ``allowed`` (label maps)."""
    allowed = sorted(int(a) for a in allowed)
    data = np.asarray(array)
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        problems.add(where, "label map has NaN/Inf values")
        return False
    values = np.unique(data)
    extra = [v for v in values.tolist() if v not in allowed]
    if extra:
        shown = ", ".join(str(v) for v in extra[:10])
        problems.add(where, f"label values {{{shown}}} outside the allowed {allowed}")
        return False
    return True


def run_each(items: Iterable[T], fn: Callable[[T], Any], name_of: Callable[[T], str] = str,
             what: str = "inference") -> list[Any]:
    """Run ``fn`` on every item; a failing item is logged and skipped, and at the end :class:`BatchFailure` names
    every failed item with the reason (:func:`common.errors.describe`: the error under MONAI's transform and
    component wrappers) so the process exits non-zero after the good ones were processed.

    Returns:
        the results of the items that succeeded, when none failed.
    """
    results, failures = [], []
    for item in items:
        try:
            results.append(fn(item))
        except Exception as e:  # noqa: BLE001 - each failure is reported by name, then re-raised together
            reason = describe(e, one_line=True)  # what is under MONAI's "applying transform <...>"
            logger.error("%s failed for %s: %s", what, name_of(item), reason)
            failures.append((name_of(item), reason))
    if failures:
        raise BatchFailure(what, failures, done=len(results))
    return results
