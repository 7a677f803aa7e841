"""Work-arounds for MONAI 1.6 bugs in ``--tracking mlflow`` (``ConfigWorkflow.patch_bundle_tracking`` and
``monai.handlers.MLFlowHandler``), each named after the bug it works around; ``common.tracking`` uses them.

1. **Executed config dropped when ``--output_dir`` is on the command line.** ``patch_bundle_tracking`` builds the
   artifact path by string concatenation of the *unparsed* ``output_dir`` expression, so with ``--output_dir O`` the
   handler receives the literal ``"O + '/config_<time>.json'"``, which is no file, and silently logs nothing:
   :func:`executed_config_path` recovers the real file; :func:`monai_logs_itself` tells when MONAI's path is fine
   (so the file is not logged twice); :func:`process_start_time` tells this run's config from older ones.
2. **The validator's handler joins the oldest unfinished run.** The ``MLFlowHandler`` MONAI appends to
   ``validate#handlers`` starts its own search for a run and attaches to the *oldest* unfinished run of the experiment
   (another concurrent training, or a crashed one): :func:`share_run_with_validator` gives it the trainer's run first.

Remove an entry when the MONAI version pinned in requirements.txt fixes it (tests/test_tracking.py pins each).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

_BROKEN_CONFIG_PATH = re.compile(r"^(?P<dir>.*) \+ '/(?P<name>config_\d{8}_\d{6}\.json)'$")


def executed_config_path(mlflow_handler: Any, output_dir: str | os.PathLike | None, since: float | None = None
                         ) -> Path | None:
    """The ``config_<time>.json`` MONAI wrote for this run.

    MONAI passes it to its handler as ``artifacts``: a real path when ``output_dir`` is the config's expression, the
    broken string ``"<dir> + '/config_<time>.json'"`` when ``output_dir`` came from the command line (the case MONAI
    drops). Falls back to the newest ``config_*.json`` in ``output_dir`` (written after ``since``, if given).
    """
    for entry in getattr(mlflow_handler, "artifacts", ()) or ():
        if not entry:
            continue
        entry = str(entry)
        if os.path.isfile(entry) and Path(entry).name.startswith("config"):
            return Path(entry)
        match = _BROKEN_CONFIG_PATH.match(entry)
        if match and (Path(match.group("dir")) / match.group("name")).is_file():
            return Path(match.group("dir")) / match.group("name")
    if output_dir is not None and Path(str(output_dir)).is_dir():
        found = sorted(Path(str(output_dir)).glob("config_*.json"), key=lambda p: p.stat().st_mtime)
        found = [p for p in found if since is None or p.stat().st_mtime >= since]
        if found:
            return found[-1]
    return None


def monai_logs_itself(mlflow_handler: Any, path: Path) -> bool:
    """True when MONAI's handler will log ``path`` at COMPLETED (its ``artifacts`` entry is that existing file)."""
    for entry in getattr(mlflow_handler, "artifacts", ()) or ():
        if entry and os.path.isfile(str(entry)) and Path(str(entry)).resolve() == path.resolve():
            return True
    return False


def process_start_time() -> float:
    """Wall-clock time this process started (Linux ``/proc``; else now), to tell this run's files from older ones."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


def share_run_with_validator(trainer_handler: Any, validator_handler: Any | None) -> None:
    """Point the validator's ``MLFlowHandler`` at the trainer's current run (bug 2), unless it already has one."""
    if validator_handler is not None and validator_handler.cur_run is None:
        validator_handler.run_name = trainer_handler.cur_run.info.run_name
        validator_handler.experiment, validator_handler.cur_run = trainer_handler.experiment, trainer_handler.cur_run
