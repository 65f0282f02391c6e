"""Where a trial runs and reports: the one seam between the loop and Ray.

Three places run the loop:
- a Ray Train worker (``TorchTrainer`` with ``num_workers >= 1``): ``ray.train`` APIs;
- Ray Train's local mode inside a Tune trial (``num_workers=0``): there ``ray.train.report``
  raises a DeprecationWarning (Ray issue 49454), so report through ``ray.tune``;
- a plain process (tests, benchmarks): metrics are kept in memory, checkpoints in a folder.

``Session`` is what the loop needs of either; only ``RaySession`` imports Ray.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

import torch
import torch.distributed as dist


@runtime_checkable
class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        """Hand one evaluation point (and a checkpoint folder, copied before this returns) on."""

    def latest_checkpoint(self) -> AbstractContextManager[str | None]:
        """The folder of the checkpoint to resume from, while the context lasts; None: start afresh."""

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as this rank trains it (wrapped for DDP across several workers)."""

    def rank_zero_first(self) -> AbstractContextManager[None]:
        """Rank 0 runs the block first while the other ranks wait, then they run it."""


@contextmanager
def _rank_zero_first(rank: int) -> Iterator[None]:
    if rank != 0:
        barrier()
    yield
    if rank == 0:
        barrier()


class LocalSession:
    """No Ray: rank 0 of 1; reports go to ``self.reports``; checkpoints to ``checkpoint_root``."""

    def __init__(self, checkpoint_root: str | None = None, resume_from: str | None = None):
        self.rank, self.world_size = 0, 1
        self.device = torch.device("cpu")
        self.reports: list[dict] = []
        self.checkpoints: list[str] = []
        self.checkpoint_root = checkpoint_root
        self.resume_from = resume_from

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None and self.checkpoint_root is not None:
            dest = Path(self.checkpoint_root) / f"checkpoint_{metrics['step']:06d}"
            shutil.copytree(checkpoint_dir, dest, dirs_exist_ok=True)
            self.checkpoints.append(str(dest))

    @contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        yield self.resume_from

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def rank_zero_first(self) -> AbstractContextManager[None]:
        return _rank_zero_first(self.rank)


class RaySession:
    def __init__(self):
        import ray.train
        import ray.train.torch
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session

        self.in_tune = _in_tune_session()
        if self.in_tune:
            self.rank, self.world_size = 0, 1
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            ctx = ray.train.get_context()
            self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
            self.device = ray.train.torch.get_device()

    def _api(self):
        import ray.train
        import ray.tune

        return ray.tune if self.in_tune else ray.train

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        api = self._api()
        checkpoint = api.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        api.report(metrics, checkpoint=checkpoint)

    @contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        checkpoint = self._api().get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as d:
            yield d

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if not distributed():
            return model
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def rank_zero_first(self) -> AbstractContextManager[None]:
        return _rank_zero_first(self.rank)


@contextmanager
def scratch_dir() -> Iterator[str]:
    """A folder that lives until the report that uploads it has returned."""
    d = tempfile.mkdtemp(prefix="rightsweep-ckpt-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_(t: torch.Tensor, op=None) -> torch.Tensor:
    """In-place sum (or ``op``) across ranks; a no-op on one process."""
    if distributed():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if distributed():
        dist.barrier()


def all_gather_int(value: int, device: torch.device) -> list[int]:
    if not distributed():
        return [value]
    mine = torch.tensor([value], dtype=torch.long, device=device)  # NCCL gathers device tensors only
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [int(t.item()) for t in out]
