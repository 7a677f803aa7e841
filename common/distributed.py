"""torch.distributed set-up for ``multi_gpu_train.json``: nccl on GPU, gloo on CPU, launched by ``torchrun``."""

from __future__ import annotations

import logging
import os
from collections.abc import Sized

import torch
import torch.distributed as dist
from torch.utils.data import Sampler, SequentialSampler

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_rank0() -> bool:
    """True on the process that writes checkpoints, logs and MLflow runs."""
    return get_rank() == 0


def init_process_group(backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` set up through the environment (``env://``).

    Args:
        backend: ``"nccl"`` or ``"gloo"``; by default nccl when CUDA is available, else gloo.

    Returns:
        True when a group was initialised, False when not launched by torchrun (no ``WORLD_SIZE``) or already set up.
    """
    if is_distributed() or "WORLD_SIZE" not in os.environ:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, init_method="env://")
    return True


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def destroy_process_group() -> None:
    """Leave the process group at the end of a run: a barrier first, so that no rank tears down its gloo/nccl
    connections while another still has a collective in flight (with gloo on CPU, a rank that destroyed its group
    while its peer was still finishing the last validation was seen to abort at exit, about 1 run in 12:
    "terminate called without an active exception", SIGABRT), then ``torch.distributed.destroy_process_group``."""
    if is_distributed():
        barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def validation_sampler(dataset: Sized) -> Sampler:
    """The validation sampler of ``multi_gpu_train.json``, for any validation split size.

    With at least as many cases as processes, MONAI's ``DistributedSampler(even_divisible=False)``: each process
    validates its share, nothing padded (MONAI's metrics gather the unequal shares). With fewer cases than processes
    (e.g. 1 validation case for ``--nproc_per_node=2``), where MONAI's sampler stops with "the dataset length is less
    than the number of participating ranks", every process validates every case instead (a ``SequentialSampler``):
    MONAI's metrics then gather the same values once per process, so every case counts equally and the mean Dice /
    AUC are exactly those of a single-process validation; one warning on rank 0 says so. Outside a process group
    (plain ``python -m monai.bundle run``), a ``SequentialSampler``.

    Args:
        dataset: the validation dataset (anything with ``len``).

    Raises:
        ValueError: the validation split is empty; the message gives the split size, the number of processes and
            what to change.
    """
    n, world = len(dataset), get_world_size()
    if n == 0:
        raise ValueError(f"the validation split has 0 cases for {world} process(es): give the dataset more cases or "
                         f"raise --val_fraction so that at least one case is held out for validation")
    if world == 1 or n < world:
        if world > 1 and is_rank0():
            logger.warning("the validation split has %d case(s) for %d processes: every process validates all %d "
                           "(metrics unchanged, each case counted equally); with at least %d validation cases the "
                           "processes share the work", n, world, n, world)
        return SequentialSampler(dataset)  # type: ignore[arg-type]
    from monai.data import DistributedSampler

    return DistributedSampler(dataset, shuffle=False, even_divisible=False, num_replicas=world, rank=get_rank())
