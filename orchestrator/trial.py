"""One trial = one Ray Train ``TorchTrainer`` running ``workers.loop.train_loop_per_worker``."""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import Resources
from workers.config import TrialConfig


def build_trainer(trial: TrialConfig, resources: Resources, name: str, storage: str, callbacks=()):
    """A ``TorchTrainer`` named ``name`` (no timestamp), so a rerun with the same name finds
    the run's checkpoints in ``storage`` and resumes in place."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from workers.loop import train_loop_per_worker

    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker or 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=trial.model_dump(),
        scaling_config=ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=resources.use_gpu,
            resources_per_worker=per_worker if resources.num_workers else None,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage) / "runs"),
            failure_config=FailureConfig(max_failures=resources.max_failures),
            callbacks=list(callbacks),
        ),
    )
