"""Command-line values reach the config exactly as typed; errors end with their reason.

``python -m monai.bundle run --output_dir 1e3`` goes through python-fire, which evaluates every value as a Python
literal: ``1e3`` arrives as ``1000.0``, ``1e-4`` as ``0.0001``, ``297e7814231`` as ``inf``, ``1_000`` as ``1000``,
``out,v2`` as a tuple. For a folder or a name that silently writes somewhere else. The text the user typed is still in
``sys.argv``; :func:`restore_overrides` puts it back for every string id (:func:`is_string_id`: ``output_dir``,
``dataset_dir``, ``input_dir``, ``ckpt_path``, ``datalist``, ``tracking_uri``, ``run_name``, ``experiment_name``
and any id ending in ``_dir``, ``_path``, ``_file``, ``_uri``, ``_name``, ``_ckpt``) and stops the run with
:class:`CommandLineError` when a string id holds a number whose text is not on the command line (an ``--args_file``
or a programmatic call).

How it runs before any work: every bundle config lists ``"$from common.cli import command_line"`` in its
``imports``. MONAI (``monai.bundle.reference_resolver.ReferenceResolver._resolve_one_item``) evaluates all import
statements before it resolves the first config item, each time the config is parsed; ``command_line`` is not a real
attribute of this module, so the import calls the module's ``__getattr__``, which finds MONAI's ``ConfigParser``
among its callers, restores the overrides in both the parser's config and its resolver (before any item that reads
them is resolved), installs :func:`common.errors.install`'s excepthook and returns :func:`restore_overrides`'s
record. A plain ``import`` would run once per process; this runs at every parse (repeated runs in one interpreter).
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from common import errors

logger = logging.getLogger(__name__)

STRING_IDS = frozenset({"bundle_root", "dataset_dir", "output_dir", "input_dir", "ckpt_path", "ckpt_dir", "datalist",
                        "tracking_uri", "run_name", "experiment_name", "synthetic_dir", "pretrained_ckpt"})
STRING_SUFFIXES = ("_dir", "_path", "_file", "_uri", "_name", "_ckpt")
_ID_SEP = re.compile(r"#|::")


class CommandLineError(SystemExit):
    """A command-line value cannot be used as typed. A ``SystemExit`` (exit status 1, the message printed as the
    last line): MONAI evaluates the config's imports through ``optional_import``, which swallows ``Exception``s."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def is_string_id(config_id: str) -> bool:
    """Whether the config id (its last ``#`` part) holds a path or a name, which must stay text."""
    last = _ID_SEP.split(str(config_id))[-1]
    return last in STRING_IDS or last.endswith(STRING_SUFFIXES)


def argv_values(argv: Sequence[str] | None = None) -> dict[str, list[str]]:
    """The text of every ``--key value`` and ``--key=value`` of ``argv`` (``sys.argv`` by default), as fire reads
    them: keys without the leading dashes and with ``-`` as ``_``; a key given more than once keeps every text.

    Tokens after a bare ``--`` (fire's own flags) are ignored; ``--flag`` followed by another ``--`` token or
    nothing is a boolean flag, not a value.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    found: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            break
        if token.startswith("--") and len(token) > 2:
            key, sep, value = token[2:].partition("=")
            if not sep:
                if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    value = argv[i + 1]
                    i += 1
                else:
                    i += 1
                    continue
            found.setdefault(key.replace("-", "_"), []).append(value)
        i += 1
    return found


def _fire_value(text: str) -> Any:
    """What python-fire makes of ``text`` (``fire.parser.DefaultParseValue``)."""
    from fire import parser

    return parser.DefaultParseValue(text)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001 - exotic values never match
        return False


def _needs_text(value: Any) -> bool:
    """A value fire made out of text that was meant as text: numbers and containers (None and booleans stay)."""
    if value is None or isinstance(value, bool):
        return False
    return isinstance(value, (int, float, complex, tuple, list, dict))


def restore_overrides(config: MutableMapping[str, Any], argv: Sequence[str] | None = None) -> dict[str, str]:
    """Put the typed text back into every string id of ``config`` that python-fire turned into a number.

    Args:
        config: the parsed config (MONAI ``ConfigParser.config``), top-level ids as keys; overrides of nested ids
            (``--a#b``) are looked up through ``#``/``::``.
        argv: the command line (``sys.argv[1:]`` by default).

    Returns:
        ``{config id: restored text}``.

    Raises:
        CommandLineError: a string id holds a number or a container that cannot be traced to one ``--id`` text on
            the command line; the message names the id, the value and how to quote it.
    """
    typed = argv_values(argv)
    restored: dict[str, str] = {}
    candidates = {key for key in typed if is_string_id(key)} | {key for key in config if is_string_id(key)}
    for key in sorted(candidates):
        container, last = _locate(config, key)
        if container is None or not _needs_text(container[last]):
            continue
        value = container[last]
        texts = [t for t in typed.get(key, []) if _same(_fire_value(t), value)]
        if len(set(texts)) != 1:
            raise CommandLineError(_refusal(key, value, typed.get(key, [])))
        container[last] = texts[0]
        restored[key] = texts[0]
    if restored:
        logger.info("command-line values kept as typed (python-fire read them as numbers): %s", restored)
    return restored


def _locate(config: Mapping[str, Any], key: str) -> tuple[Any, Any]:
    """The container holding ``key`` (an id with ``#``/``::``) and the last part, or ``(None, None)``."""
    parts = _ID_SEP.split(key)
    node: Any = config
    for part in parts[:-1]:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None, None
    last: Any = parts[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        return node, int(last)
    if isinstance(node, MutableMapping) and last in node:
        return node, last
    return None, None


def _refusal(key: str, value: Any, texts: list[str]) -> str:
    shown = f" (typed {texts[-1]!r})" if texts else ""
    example = texts[-1] if texts else "1e3"
    return (f"--{key} was read as the {type(value).__name__} {value!r}{shown}, but {key} is a path or a name and must "
            f"be text; nothing was run. Quote it twice so python-fire keeps it as text: --{key} '\"{example}\"' "
            f"(in an --args_file or a Python call, pass a string)")


def _find_parser() -> Any:
    """MONAI's ``ConfigParser`` that is resolving the config: the ``self`` of a caller frame."""
    from monai.bundle import ConfigParser

    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, ConfigParser):
                return candidate
            frame = frame.f_back
    finally:
        del frame
    return None


def prepare_command_line() -> dict[str, str]:
    """Restore the string overrides of the config being resolved (:func:`restore_overrides`, on the parser's config
    and on the items already parsed from it) and install :func:`common.errors.excepthook`.

    Returns:
        ``{config id: restored text}`` (empty when called outside a MONAI config).

    Raises:
        CommandLineError: see :func:`restore_overrides`.
    """
    errors.install()
    parser = _find_parser()
    if parser is None:
        return {}
    restored = restore_overrides(parser.config)
    resolver = parser.ref_resolver
    for key, text in restored.items():
        item_id = resolver.normalize_id(key)
        item = resolver.items.get(item_id)
        if item is not None:
            item.update_config(text)
        if item_id in resolver.resolved_content:
            resolver.resolved_content[item_id] = text
    return restored


def __getattr__(name: str) -> Any:
    """``from common.cli import command_line`` (in every config's ``imports``) runs :func:`prepare_command_line`."""
    if name == "command_line":
        try:
            return prepare_command_line()
        except CommandLineError:
            raise
        except Exception as e:  # MONAI's optional_import would swallow it and run on unchecked values
            raise CommandLineError(f"common.cli could not check the command-line values against the config "
                                   f"({errors.describe(e, one_line=True)}); nothing was run") from e
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def as_bool(value: Any, name: str) -> bool:
    """A config flag given as a bool or as command-line text (``--explain false``, ``--strict_rows 1``).

    Raises:
        ValueError: anything other than a bool or true/false/1/0/yes/no/none text (names the id).
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", "none", ""):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}.")
