"""torch.distributed set-up for ``multi_gpu_train.json``: nccl on GPU, gloo on CPU, launched by ``torchrun``."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


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
