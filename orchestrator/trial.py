"""One trial = one Ray Train ``TorchTrainer`` running ``workers.loop.train_loop_per_worker``;
in a sweep, a Tune function builds and fits it."""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from orchestrator.config import ExperimentConfig, Resources
from orchestrator.pareto import Anchors, best_loss, f_star
from orchestrator.resume import stop_file, write_json
from orchestrator.space import Point, anchor_points, apply_point
from workers.config import ConfigError, TrialConfig
from workers.metrics import OBJECTIVES

log = logging.getLogger("rightsweep")


def prepare_in_stages(submit, result, trial: dict, world_size: int, shards: int) -> dict:
    """``workers.inputs.prepare`` through ``submit(fn, *args)`` (a Ray task, or a process of
    a pool) and ``result(future)``. With several shards, the reference pass is split first:
    one call builds the token cache and plans the shards, one call per shard computes its
    pairs, all at once, and ``prepare`` merges them into the one cache file (one pass
    recorded). With one shard, ``prepare`` computes it alone, as a trial would."""
    from workers.inputs import plan_reference, prepare, reference_shard

    done = []
    if shards > 1:
        plan = result(submit(plan_reference, trial, shards))
        done = [result(f) for f in [submit(reference_shard, trial, shard) for shard in plan]]
    return result(submit(prepare, trial, world_size, done))


def prepare_shared(trial: TrialConfig, resources: Resources) -> dict:
    """Before any trial, once: build the embedded assets, the token cache and the reference
    log-probs, and read the inputs far enough to refuse what the config alone could not
    show (no row fits max_len, LoRA targets match nothing, the model cannot be loaded) as a
    ``ConfigError``. Ray tasks with one training process's resources each (the reference
    needs the model, and maybe a GPU); the reference pass over ``num_workers`` of them."""
    import ray

    need = resources.per_process()
    options = dict(num_cpus=need.pop("CPU"), num_gpus=need.pop("GPU", 0), resources=need, max_retries=0)

    def submit(fn, *args):
        return ray.remote(fn).options(**options).remote(*args)

    started = time.perf_counter()
    try:
        workers = max(resources.num_workers, 1)
        provenance = prepare_in_stages(submit, ray.get, trial.model_dump(), workers, workers)
    except ConfigError as e:  # Ray's error subclasses the worker's: report the worker's own message
        raise ConfigError(str(getattr(e, "cause", e))) from None
    log.info("shared inputs ready (embedded assets, token cache, reference log-probs) in %.1fs", time.perf_counter() - started)
    return provenance


def connect_and_prepare(trial: TrialConfig, resources: Resources) -> dict:
    """Connect to Ray (or start a private local one), check that a trial fits, and build the
    shared inputs. When this process starts the Ray, the machine that builds them is this
    one, so they are built in processes of their own (one per shard of the reference pass)
    while Ray starts instead of after (seconds of every sweep); on a cluster, as Ray tasks."""
    from orchestrator.cluster import check_fits, connect, will_start_locally

    if not will_start_locally():
        connect()
        check_fits(resources)
        return prepare_shared(trial, resources)
    started, workers = time.perf_counter(), max(resources.num_workers, 1)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool, ThreadPoolExecutor(1) as stages:
        preparing = stages.submit(prepare_in_stages, pool.submit, Future.result, trial.model_dump(), workers, workers)
        connect()
        check_fits(resources)
        provenance = preparing.result()
    log.info("shared inputs ready (embedded assets, token cache, reference log-probs) in %.1fs, built while Ray started",
             time.perf_counter() - started)
    return provenance


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


def tune_trial(config: dict, experiment: dict, anchors: dict | None, resume_from: dict[str, str]) -> None:
    """The Tune function of a sweep: one grid point -> one ``TorchTrainer.fit()``.

    With ``num_workers=0`` the loop runs right here (Ray Train local mode) and reports
    through ``ray.tune``; with workers, ``TuneReportCallback`` forwards rank 0's reports.
    Everything a point leaves on storage is named by its label (its Train run, its output,
    its MLflow run), so a later run of the sweep finds it again (``orchestrator.resume``);
    ``resume_from`` maps labels to the local-mode checkpoints to continue from.
    ``anchors`` is f* when the config gives it; otherwise an anchor trial publishes its best
    loss on storage when it ends, and a MAXRIGHT trial waits for every anchor seed's.
    """
    point = Point.from_dict(config["point"])
    label = point.label
    # Named by this trial (a kept actor runs one trial after another): in local mode the
    # loop logs through it, so each of its lines says whose it is.
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {label} %(name)s: %(message)s", force=True)
    cfg = ExperimentConfig.model_validate(experiment)
    log.info("%s starts in process %d", label, os.getpid())  # for an operator who must stop one trial
    sweep_dir = Path(cfg.storage) / cfg.name
    if point.is_anchor:
        anchor_file(sweep_dir, point).unlink(missing_ok=True)  # a rerun's, not an old failure
    if anchors is None and point.waits_for_anchors:
        anchors = wait_for_anchors(sweep_dir, cfg.sweep.seeds)
    trial = apply_point(cfg.trial, point, Anchors(**anchors) if anchors else None, cfg.sweep.per_schedule)
    trial = trial.model_copy(update={
        "output_dir": str(sweep_dir / "trials" / label), "resume_from": resume_from.get(label),
        "stop_file": str(stop_file(sweep_dir, label)) if cfg.sweep.early_stop else None,
    })
    callbacks = []
    if cfg.resources.num_workers:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    try:
        result = build_trainer(trial, cfg.resources, label, str(sweep_dir), callbacks).fit()
        if result.error:
            raise result.error
    except BaseException as e:
        if point.is_anchor:
            publish_anchor(sweep_dir, point, {"error": f"{label} failed: {e}"[:2000]})
        raise
    if point.is_anchor:
        points = json.loads((Path(trial.output_dir) / "trajectory.json").read_text())["points"]
        publish_anchor(sweep_dir, point, {"best": best_loss(point.objective, points)})


def anchor_watch(sweep_dir: Path):
    """A Tune callback on the driver: an anchor trial that fails for good (its retries spent)
    without saying so itself — its process was killed — is published as failed, so the
    MAXRIGHT trials waiting for it fail with its name instead of waiting for ever."""
    from ray.tune import Callback

    class _AnchorWatch(Callback):
        def on_trial_error(self, iteration, trials, trial, **info):
            point = Point.from_dict(trial.config["point"])
            if not point.is_anchor:
                return
            if not anchor_file(sweep_dir, point).exists():
                try:  # Tune's error.txt, last line: the exception
                    reason = Path(trial.error_file).read_text().strip().splitlines()[-1][:500]
                except (TypeError, OSError, IndexError):
                    reason = "its process died"
                publish_anchor(sweep_dir, point, {"error": f"{point.label} failed: {reason}"})

    return _AnchorWatch()


def anchor_file(sweep_dir: Path, anchor: Point) -> Path:
    return sweep_dir / "anchors" / f"{anchor.objective}-seed{anchor.seed}.json"


def publish_anchor(sweep_dir: Path, anchor: Point, content: dict) -> None:
    write_json(anchor_file(sweep_dir, anchor), content)  # atomic: a waiting trial reads all of it or nothing


def wait_for_anchors(sweep_dir: Path, seeds: list[int], poll_s: float = 0.5) -> dict:
    """f* from every anchor trial (both objectives, every seed), once they have ended (they
    start before any MAXRIGHT trial, so this ends); an anchor's failure fails the waiting
    trial too."""
    wanted = anchor_points(seeds)
    found: dict[Point, dict] = {}
    while len(found) < len(wanted):
        for p in wanted:
            path = anchor_file(sweep_dir, p)
            if p not in found and path.exists():
                found[p] = json.loads(path.read_text())
        if errors := [a["error"] for a in found.values() if "error" in a]:
            raise RuntimeError(f"f* cannot be estimated: {'; '.join(errors)}")
        if len(found) < len(wanted):
            time.sleep(poll_s)
    best = {objective: [a["best"] for p, a in found.items() if p.objective == objective] for objective in OBJECTIVES}
    return {"f_star_sft": f_star(best["sft"]), "f_star_dpo": f_star(best["dpo"])}
