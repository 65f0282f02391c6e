"""Real DDP on CPU without Ray: ``world`` processes joined by gloo, each running a function."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workers.session import LocalSession


class DdpSession(LocalSession):
    """A LocalSession that is rank ``rank`` of an initialised process group and wraps the
    model in DistributedDataParallel, as Ray Train's ``prepare_model`` does."""

    def __init__(self, rank: int, world: int):
        super().__init__()
        self.rank, self.world_size = rank, world

    def prepare_model(self, model):
        return torch.nn.parallel.DistributedDataParallel(model)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results[rank] = fn(DdpSession(rank, world), *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, *args) -> list:
    """``fn(session, *args)`` on every rank (``fn`` must be importable: a module-level
    function); returns each rank's result."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_entry, args=(world, _free_port(), fn, args, results), nprocs=world, join=True)
        return [results[r] for r in range(world)]
