"""Where a bundle lives, whether it is run from the repository root or from its own folder.

MONAI gives config expressions no access to the config file's path, so every bundle sets
``"bundle_root": "$common.paths.bundle_root('<area>')"`` and this function finds the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def bundle_root(name: str, cwd: str | os.PathLike | None = None) -> str:
    """Return the absolute path of bundle ``name``.

    Looked up in this order: ``<cwd>/bundles/<name>`` (run from the repository root), ``<cwd>`` itself when it is
    the bundle's folder (the Model Zoo habit of running from the bundle), ``<cwd>/..`` when run from its
    ``configs`` folder, and last the ``bundles/<name>`` folder of the repository this library was installed from.

    Raises:
        FileNotFoundError: no folder with ``configs/metadata.json`` was found for ``name``.
    """
    here = Path(os.path.abspath(cwd)) if cwd is not None else Path.cwd()  # "." and "configs" have no usable .name
    candidates = [here / "bundles" / name, here, here.parent, REPO_ROOT / "bundles" / name]
    for candidate in candidates:
        if candidate.name == name and (candidate / "configs" / "metadata.json").is_file():
            return str(candidate.resolve())
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"bundle '{name}' not found (looked in {tried}); run from the repository root or from "
                            f"bundles/{name}, or pass --bundle_root")
