"""Shared library of the bundle collection."""

from common import errors as _errors

_errors.install()  # bundle commands end with the root cause of a failure (common/errors.py)
