"""Format every bundle's JSON configs by one rule, or check that they are (the Model Zoo's JSON style).

The rule: ``json.dumps(config, indent=4, ensure_ascii=False) + "\\n"``, keys in their written order. It is what the
Model Zoo's pre-commit hook ``pretty-format-json --autofix --indent 4 --no-sort-keys --no-ensure-ascii`` writes.

Usage, from the repository root::

    python tools/format_configs.py --check   # list the files that differ, exit 1 if any (CI, tests)
    python tools/format_configs.py           # rewrite them in place (atomically)

Files: ``bundles/*/configs/*.json`` (and any paths given on the command line).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def formatted(text: str, path: Path | str = "<text>") -> str:
    """``text`` (a JSON document) formatted by the rule above.

    Raises:
        ValueError: ``text`` is not valid JSON (the message names ``path``, line and column).
    """
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    return json.dumps(config, indent=4, ensure_ascii=False) + "\n"


def config_files(root: Path = REPO_ROOT) -> list[Path]:
    """Every ``bundles/*/configs/*.json`` under ``root``, sorted."""
    return sorted(root.glob("bundles/*/configs/*.json"))


def unformatted(paths: list[Path]) -> list[Path]:
    """The files among ``paths`` whose text differs from its formatted form."""
    return [p for p in paths if p.read_text(encoding="utf-8") != formatted(p.read_text(encoding="utf-8"), p)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report the files that are not formatted")
    parser.add_argument("paths", nargs="*", type=Path, help="JSON files (default: bundles/*/configs/*.json)")
    args = parser.parse_args(argv)
    paths = args.paths or config_files()
    try:
        todo = unformatted(paths)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    if args.check:
        for path in todo:
            print(f"not formatted: {path} (run: python tools/format_configs.py {path})")
        return 1 if todo else 0
    sys.path.insert(0, str(REPO_ROOT))
    from common.io import write_text  # atomic: a file is either the old or the new text

    for path in todo:
        write_text(path, formatted(path.read_text(encoding="utf-8"), path))
        print(f"formatted {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
