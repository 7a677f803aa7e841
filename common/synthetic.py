"""The bundled synthetic data set, generated on first use: once, whole, by one process.

With no ``--dataset_dir`` a workflow reads the bundle's synthetic folder (``<bundle_root>/data/synthetic``); when that
folder is missing or empty, :func:`ensure_synthetic` generates it. One process writes and the others wait: in a
``torch.distributed`` run rank 0 generates and every rank meets at a barrier; independent processes (two
trainings started at once) serialise on a file lock beside the folder. The set is generated into a temporary
folder beside the target and renamed into place, so a killed run never leaves half a data set that later runs
would take for a whole one. A user-given ``--dataset_dir`` is never written to.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


def is_empty(folder: str | os.PathLike) -> bool:
    """True when ``folder`` does not exist or holds nothing but hidden entries (``.DS_Store``, lock files)."""
    folder = Path(str(folder))
    return not folder.is_dir() or not any(not p.name.startswith(".") for p in folder.iterdir())


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive ``fcntl.flock`` on ``lock_path`` (created), released on exit; waits while another holds it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _generate_atomically(target: Path, generate: Callable[[str], object]) -> None:
    """Run ``generate(tmp)`` in a temporary folder beside ``target``, then rename it to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        logger.info("no data in %s: generating the bundle's synthetic data set there (first use; pass --dataset_dir "
                    "for real data)", target)
        generate(str(tmp))
        if target.is_dir():  # an empty folder (is_empty) is replaced; os.rename refuses a non-empty one
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_synthetic(dataset_dir: str | os.PathLike, synthetic_dir: str | os.PathLike,
                     generate: Callable[[str], object]) -> bool:
    """Generate the bundle's synthetic set into ``dataset_dir`` when it is ``synthetic_dir`` and :func:`is_empty`.

    Every process of a run calls this. In an initialised ``torch.distributed`` group rank 0 generates and all
    ranks then wait at a barrier; otherwise a file lock (``.<name>.lock`` beside the folder) lets the first process
    generate while the others wait and then find the set present.

    Args:
        dataset_dir: the workflow's ``dataset_dir``.
        synthetic_dir: the bundle's default synthetic folder; any other ``dataset_dir`` is left alone.
        generate: writes the whole set into the folder it is given (e.g. the phantom's ``write_dataset``).

    Returns:
        True when this process generated the set.

    Raises:
        whatever ``generate`` raises (nothing is left behind: the temporary folder is removed).
    """
    from common.distributed import barrier, is_distributed, is_rank0

    target, default = Path(str(dataset_dir)), Path(str(synthetic_dir))
    if target.resolve() != default.resolve():
        return False
    made = False
    if not is_distributed() or is_rank0():
        with _locked(target.parent / f".{target.name}.lock"):
            if is_empty(target):
                _generate_atomically(target, generate)
                made = True
    barrier()
    return made
