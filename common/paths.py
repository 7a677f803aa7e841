"""Where a bundle lives: the folder whose configs are being run, wherever that folder is.

MONAI gives config expressions no access to the config file's path, so every bundle sets
``"bundle_root": "$common.paths.bundle_root('<area>')"`` and this module finds the folder by one rule, the rule MONAI
itself uses in ``ConfigWorkflow.run`` to put the bundle on ``sys.path``: the bundle is the parent of the ``configs``
folder that holds the first ``--config_file`` of the command. So ``bundles/brain/configs/train.json`` run from the
repository root, ``configs/train.json`` run from ``bundles/brain``, and ``configs/train.json`` run from a renamed copy
of the folder anywhere on disk each give the folder being run, and the outputs that default to ``<bundle_root>/...``
land in it.

``monai.bundle ckpt_export`` and ``verify_net_in_out``, unlike ``run``, do not put the bundle on ``sys.path``, so a
network whose ``_target_`` is in the bundle's ``scripts`` package would not be found from the repository root; such a
``network_def`` declares ``"_requires_": "$common.paths.on_sys_path(@bundle_root)"``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _parse_value(value: str) -> list[str]:
    """The config file paths in one ``--config_file`` value, read as MONAI reads it (python-fire, then commas)."""
    try:
        from fire import parser  # MONAI's command line is python-fire; parse the value the same way

        parsed = parser.DefaultParseValue(value)
    except Exception:  # fire missing or an unparsable value: keep the text as typed
        parsed = value
    if isinstance(parsed, (list, tuple)):
        return [str(p) for p in parsed]
    text = str(parsed)
    if "," in text and not Path(text).is_file():  # MONAI's ConfigParser.load_config_files splits "a.json,b.json"
        return [p.strip() for p in text.split(",") if p.strip()]
    return [text]


def config_files(argv: Sequence[str] | None = None) -> list[str]:
    """The ``--config_file`` paths of a command line (``sys.argv`` by default), as typed (relative paths kept).

    Reads ``--config_file X`` and ``--config_file=X``, where ``X`` is one path, MONAI's list syntax
    ``"['a.json','b.json']"`` or ``a.json,b.json``. Returns ``[]`` when the command line names no config file (e.g. a
    Python session that builds a ``ConfigParser`` itself).
    """
    argv = list(sys.argv if argv is None else argv)
    value = None
    for i, arg in enumerate(argv):
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
    return _parse_value(value) if value else []


def _is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "metadata.json").is_file()


def bundle_root(name: str | None = None, cwd: str | os.PathLike | None = None,
                argv: Sequence[str] | None = None) -> str:
    """Return the absolute path of the bundle folder being run.

    The rule (MONAI's own in ``ConfigWorkflow.run``): the first ``--config_file`` on the command line (``argv``,
    default ``sys.argv``) whose folder belongs to a bundle gives the bundle: the parent of that folder when it is
    named ``configs``, else the folder itself; relative paths are taken from ``cwd`` (default: the working
    directory). The folder's name does not matter, so a renamed copy resolves to itself.

    With no config file on the command line (a Python session reading the configs itself), it falls back to
    ``cwd`` when it is a bundle folder, its parent when ``cwd`` is a ``configs`` folder, ``<cwd>/bundles/<name>``,
    and last ``bundles/<name>`` of the repository this library was installed from.

    Args:
        name: the bundle's folder name in this repository (``brain``...), used only by the fallback.
        cwd: folder that relative paths are taken from; default the working directory.
        argv: command line to read ``--config_file`` from; default ``sys.argv``.

    Raises:
        FileNotFoundError: no folder with ``configs/metadata.json`` was found.
    """
    here = Path(os.path.abspath(cwd)) if cwd is not None else Path.cwd()  # "." and "configs" have no usable .name
    candidates = []
    for config in config_files(argv):
        folder = (here / config).parent  # an absolute ``config`` replaces ``here``
        candidates.append(folder.parent if folder.name == "configs" else folder)
    from_command_line = bool(candidates)
    if not from_command_line:
        candidates += [here, here.parent] if here.name == "configs" else [here]
        if name:
            candidates += [here / "bundles" / name, REPO_ROOT / "bundles" / name]
    for candidate in candidates:
        if _is_bundle(candidate):
            return str(candidate.resolve())
    tried = ", ".join(str(c) for c in candidates)
    where = "the folders of --config_file" if from_command_line else "the working directory"
    raise FileNotFoundError(f"bundle {name or ''} not found from {where} (no configs/metadata.json in {tried}); run "
                            f"with --config_file <bundle>/configs/<workflow>.json, or pass --bundle_root")


def on_sys_path(root: str | os.PathLike) -> str:
    """Put bundle folder ``root`` on ``sys.path`` (second place, as MONAI's ``run`` does) so that its ``scripts``
    package is importable, and return ``root`` unchanged.

    ``monai.bundle ckpt_export`` and ``verify_net_in_out`` do not do this themselves; a ``network_def`` defined in the
    bundle's ``scripts`` lists ``"_requires_": "$common.paths.on_sys_path(@bundle_root)"``. (The name avoids the word
    "import": MONAI takes any expression containing it for an import statement and fails on the ``@`` reference.)

    Raises:
        FileNotFoundError: ``root`` holds no ``scripts`` folder.
    """
    folder = os.path.abspath(str(root))
    if not os.path.isdir(os.path.join(folder, "scripts")):
        raise FileNotFoundError(f"bundle_root '{root}' holds no scripts/ folder; pass the bundle folder "
                                f"(the one with configs/ and scripts/) as --bundle_root")
    if folder not in [os.path.abspath(p) for p in sys.path if p]:
        sys.path.insert(1, folder)
    return str(root)
