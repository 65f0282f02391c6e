"""One trial = one Ray Train ``TorchTrainer`` running ``workers.loop.train_loop_per_worker``;
in a sweep, a Tune function builds and fits it."""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import ExperimentConfig, Resources
from orchestrator.pareto import Anchors
from orchestrator.space import apply_point
from workers.config import TrialConfig


def build_trainer(trial: TrialConfig, resources: Resources, name: str, storage: str, callbacks=()):
    """A ``TorchTrainer`` named ``name`` (no timestamp), so a rerun with the same name finds
    the run's checkpoints in ``storage`` and resumes in place."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from workers.loop import train_loop_per_worker

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=trial.model_dump(),
        scaling_config=ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=resources.use_gpu,
            resources_per_worker=resources.per_process() if resources.num_workers else None,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage) / "runs"),
            failure_config=FailureConfig(max_failures=resources.max_failures),
            callbacks=list(callbacks),
        ),
    )


def tune_trial(config: dict, experiment: dict, anchors: dict | None) -> None:
    """The Tune function of a sweep: one grid point -> one ``TorchTrainer.fit()``.

    With ``num_workers=0`` the loop runs right here (Ray Train local mode) and reports
    through ``ray.tune``; with workers, ``TuneReportCallback`` forwards rank 0's reports.
    """
    import ray.tune

    cfg = ExperimentConfig.model_validate(experiment)
    trial_id = ray.tune.get_context().get_trial_id()
    sweep_dir = Path(cfg.storage) / cfg.name
    trial = apply_point(cfg.trial, config["point"], Anchors(**anchors) if anchors else None)
    trial = trial.model_copy(update={"output_dir": str(sweep_dir / "trials" / trial_id)})
    callbacks = []
    if cfg.resources.num_workers:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    result = build_trainer(trial, cfg.resources, trial_id, str(sweep_dir), callbacks).fit()
    if result.error:
        raise result.error
