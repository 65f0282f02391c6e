"""Real DDP on CPU without Ray: ``world`` spawned processes joined by gloo, each running a
function. Nothing is forked (a fork of a process running Ray's threads can deadlock), and
every wait has a deadline, so a broken rank fails the test instead of hanging it."""

from __future__ import annotations

import datetime
import json
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workers.session import LocalSession

DEADLINE_S = 300


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


def _entry(rank: int, world: int, port: int, out: str, fn, args) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=DEADLINE_S))
    try:
        Path(out, f"rank{rank}.json").write_text(json.dumps(fn(DdpSession(rank, world), *args)))
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, *args) -> list:
    """``fn(session, *args)`` on every rank (``fn``: a module-level function returning
    JSON-able values); returns each rank's result."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="rs-ddp-") as out:
        port = _free_port()
        procs = [ctx.Process(target=_entry, args=(r, world, port, out, fn, args)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(DEADLINE_S)
        for p in procs:
            if p.is_alive():
                p.kill()
        codes = [p.exitcode for p in procs]
        assert codes == [0] * world, f"ranks exited with {codes} (None: killed at the {DEADLINE_S} s deadline)"
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
