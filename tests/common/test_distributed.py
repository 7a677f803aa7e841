"""common.distributed.validation_sampler: every validation split size works for any number of processes."""

from __future__ import annotations

import logging

import pytest
from torch.utils.data import SequentialSampler

from common import distributed


def _world(monkeypatch, world: int, rank: int) -> None:
    monkeypatch.setattr(distributed, "get_world_size", lambda: world)
    monkeypatch.setattr(distributed, "get_rank", lambda: rank)


def _indices(world: int, n: int, monkeypatch) -> list[list[int]]:
    out = []
    for rank in range(world):
        _world(monkeypatch, world, rank)
        out.append(list(distributed.validation_sampler(list(range(n)))))
    return out


def test_single_process_validates_everything_in_order(monkeypatch):
    _world(monkeypatch, 1, 0)
    sampler = distributed.validation_sampler(list(range(3)))
    assert isinstance(sampler, SequentialSampler) and list(sampler) == [0, 1, 2]


@pytest.mark.parametrize("world,n,expected", [
    (2, 4, [[0, 2], [1, 3]]),  # shared, nothing padded
    (2, 3, [[0, 2], [1]]),  # unequal shares, no case twice (MONAI's metrics gather unequal shares)
    (2, 2, [[0], [1]]),
    (4, 5, [[0, 4], [1], [2], [3]]),
])
def test_enough_cases_are_shared_without_padding(monkeypatch, world, n, expected):
    shares = _indices(world, n, monkeypatch)
    assert shares == expected
    assert sorted(i for s in shares for i in s) == list(range(n)), "each case exactly once over the processes"


@pytest.mark.parametrize("world,n", [(2, 1), (4, 3), (8, 1)])
def test_fewer_cases_than_processes_every_process_validates_all(monkeypatch, caplog, world, n):
    with caplog.at_level(logging.WARNING, logger="common.distributed"):
        shares = _indices(world, n, monkeypatch)
    # every case once per process: MONAI's gathered mean (Dice, AUC) equals the single-process value
    assert shares == [list(range(n))] * world
    (message,) = [r.getMessage() for r in caplog.records if r.name == "common.distributed"]  # rank 0 only
    assert f"validation split has {n} case(s) for {world} processes" in message


def test_empty_validation_split_is_one_clear_error(monkeypatch):
    _world(monkeypatch, 2, 1)
    with pytest.raises(ValueError, match=r"the validation split has 0 cases for 2 process\(es\): .*--val_fraction"):
        distributed.validation_sampler([])
