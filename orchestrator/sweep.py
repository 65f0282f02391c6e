"""The sweep driver: shared preparation, the grid (anchors and main trials), the report.

Runs where ``rightsweep sweep`` (or ``ray job submit … sweep``) starts it. The grid is one
Tune experiment under ``<storage>/<name>/tune/grid``, so ``--resume`` restores it and
reruns only what did not finish.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import yaml

from orchestrator.config import ConfigError, ExperimentConfig
from orchestrator.mirror import MlflowSync, backfill, trial_params, tune_callback, tune_trajectory
from orchestrator.pareto import Anchors, Summary, TrialResult, summarize
from orchestrator.redact import redact, redact_text
from orchestrator.report import format_table, write_artifacts
from orchestrator.space import anchors_from_trajectories, sweep_points, trial_label

log = logging.getLogger("rightsweep.sweep")
DRIVER_MEMORY = 64 * 2**20  # bytes a trial's driver process reserves when workers do the training


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def trial_result(trial_id: str, point: dict, trajectory: list[dict]) -> TrialResult:
    last = trajectory[-1]
    return TrialResult(
        trial_id=trial_id, schedule=point["schedule"], lam=float(point["lam"]), seed=int(point["seed"]),
        sft_loss=float(last["eval/sft_loss"]), dpo_loss=float(last["eval/dpo_loss"]),
        pref_accuracy=float(last.get("eval/pref_accuracy", math.nan)),
        runtime_s=float(last.get("time/train_s", math.nan)) + float(last.get("time/eval_s", math.nan)),
        peak_mem_mb=float(last.get("system/peak_mem_mb", math.nan)),
    )


def initial_point(trajectories: list[list[dict]]) -> tuple[float, float]:
    """The initial model's losses (every trial starts from the same base, so any step-0
    point; the worst of them if they differ by float noise)."""
    starts = [t[0] for t in trajectories if t and int(t[0]["step"]) == 0]
    return (max(p["eval/sft_loss"] for p in starts), max(p["eval/dpo_loss"] for p in starts))


def finished_anchors(anchor_trials: list[tuple[dict, list[dict]]]) -> Anchors | None:
    """f* from the anchor trials that finished (every seed's); None unless both objectives have one."""
    by_objective: dict[str, list[list[dict]]] = {"sft": [], "dpo": []}
    for point, traj in anchor_trials:
        by_objective[point["objective"]].append(traj)
    if not by_objective["sft"] or not by_objective["dpo"]:
        return None
    return anchors_from_trajectories(by_objective["sft"], by_objective["dpo"])


def max_concurrent(cfg: ExperimentConfig, n_trials: int) -> int:
    """As many trials as the cluster's current resources fit (at least one: an autoscaler
    may add nodes), unless the config says."""
    if cfg.sweep.max_concurrent_trials:
        return cfg.sweep.max_concurrent_trials
    import ray

    have = ray.cluster_resources()
    need = cfg.resources.per_trial()
    fits = min((int(have.get(k, 0) // v) for k, v in need.items() if v > 0), default=n_trials)
    return max(1, min(fits, n_trials))


def run_grid(cfg: ExperimentConfig, points: list[dict], anchors: Anchors | None, sync: MlflowSync | None, resume: bool):
    """One Tune experiment over ``points``; returns {trial_id: (point, trajectory)} of the
    trials that finished, and the ids of those that failed."""
    from ray import tune

    from orchestrator.trial import tune_trial

    sweep_dir = Path(cfg.storage) / cfg.name
    path = sweep_dir / "tune" / "grid"
    # Trials never talk to MLflow (the driver mirrors their results), so its URI, which may
    # carry a password, stays out of what Tune pickles onto storage.
    experiment = cfg.model_dump(exclude={"tracking"})
    trainable = tune.with_parameters(tune_trial, experiment=experiment, anchors=asdict(anchors) if anchors else None)
    # With workers, the trial process only drives a TorchTrainer and reserves no CPU (a
    # token of memory, as Ray refuses an empty bundle); in local mode it trains.
    trial_needs = cfg.resources.per_process() if cfg.resources.num_workers == 0 else {"memory": DRIVER_MEMORY}
    trainable = tune.with_resources(trainable, trial_needs)
    if resume and tune.Tuner.can_restore(str(path)):
        log.info("resuming the sweep from %s", path)
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"point": tune.grid_search(points)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=max_concurrent(cfg, len(points)),
                # A trial process is kept for the next trial: its imports (torch, transformers,
                # datasets: most of a short trial's fixed cost) are paid once per slot.
                reuse_actors=True,
                trial_name_creator=lambda t: trial_label(t.config["point"]),
                trial_dirname_creator=lambda t: f"{trial_label(t.config['point'])}-{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name="grid",
                storage_path=str(sweep_dir / "tune"),
                callbacks=[tune_callback(sync)] if sync else [],
                verbose=1,
            ),
        )
    grid = tuner.fit()
    finished, failed = {}, []
    for r in grid:
        trial_id = r.metrics.get("trial_id") if r.metrics else None
        if r.error is not None or r.metrics_dataframe is None:
            failed.append(trial_id or str(r.path))
            log.warning("trial %s failed: %s", trial_id or r.path, r.error)
            continue
        finished[trial_id] = (r.config["point"], tune_trajectory(r.metrics_dataframe))
    return finished, failed


def run_sweep(cfg: ExperimentConfig, resume: bool = False) -> Summary:
    from orchestrator.tracking import tracking_uri
    from orchestrator.trial import connect_and_prepare

    sweep_dir = Path(cfg.storage) / cfg.name
    state_file = sweep_dir / "sweep.json"
    state = json.loads(state_file.read_text()) if resume and state_file.exists() else {}
    if not resume and sweep_dir.exists() and (sweep_dir / "tune").exists():
        moved = sweep_dir.with_name(f"{cfg.name}-prev-{time.strftime('%Y%m%d-%H%M%S')}")
        sweep_dir.rename(moved)
        log.info("a previous sweep %r was moved to %s (use --resume to continue one instead)", cfg.name, moved)
    sweep_dir.mkdir(parents=True, exist_ok=True)

    uri = tracking_uri(cfg.tracking.tracking_uri, cfg.storage)
    # MLflow's store (seconds: imports, a new database's tables) is opened while Ray starts
    # and the shared inputs are built: none needs the others, and all come before a trial.
    with ThreadPoolExecutor(max_workers=1) as pool:
        opening = pool.submit(open_tracker, cfg, uri)
        numerics = connect_and_prepare(cfg.trial, cfg.resources)
        tracker = opening.result()
    log.info("numerics: %s", ", ".join(f"{k}={v}" for k, v in numerics.items()))
    with tracking_errors(uri):  # only now: a sweep refused above leaves no run behind
        params = {**redact(flatten(cfg.model_dump())), **{f"numerics.{k}": v for k, v in numerics.items()}}
        parent_id = tracker.start_parent(cfg.name, params, state.get("parent_run_id"))
    # What `rightsweep sync` needs to mirror this sweep later: its run and its config.
    state.update(parent_run_id=parent_id, tracking_uri=redact_text(uri), config=redact(cfg.model_dump()), numerics=numerics)
    state_file.write_text(json.dumps(state, indent=1))
    log.info("MLflow: experiment %r, parent run %s, store %s", cfg.name, parent_id, redact_text(uri))

    # One Tune experiment for the whole grid, so trial processes (and their imports) are
    # reused from the anchors to the last trial.
    points = sweep_points(cfg.sweep.schedules, cfg.sweep.lams, cfg.sweep.seeds, with_anchors=cfg.sweep.anchors and not cfg.anchors_given)
    given = Anchors(cfg.trial.train.f_star_sft, cfg.trial.train.f_star_dpo) if cfg.anchors_given else None
    sync = MlflowSync(uri, cfg.name, cfg.storage, parent_id, {trial_label(p): trial_params(cfg, p) for p in points})
    done, failed = run_grid(cfg, points, given, sync, resume)
    anchors = given or finished_anchors([(point, traj) for point, traj in done.values() if point["stage"] == "anchor"])
    if anchors is None:
        log.warning("no f*: %s; gaps and ideal distances are not computed",
                    "sweep.anchors is off and trial.train gives none" if not cfg.sweep.anchors else f"anchor trials failed ({failed})")
    else:
        log.info("anchors: f*_SFT=%.4f f*_DPO=%.4f", anchors.f_star_sft, anchors.f_star_dpo)
        state.update(asdict(anchors))
    main = {tid: (point, traj) for tid, (point, traj) in done.items() if point["stage"] == "main"}
    if not main:
        raise RuntimeError(f"every trial of the sweep failed: {failed}")
    main_traj = {tid: traj for tid, (_, traj) in main.items()}
    results = [trial_result(tid, point, traj) for tid, (point, traj) in main.items()]
    summary = summarize(results, anchors, initial_point([traj for _, traj in done.values()]),
                        cfg.sweep.hypervolume_reference, numerics)

    state.update(finished=True, failed=failed)
    state_file.write_text(json.dumps(state, indent=1))
    print(format_table(summary), flush=True)
    paths = write_artifacts(summary, main_traj, sweep_dir / "report")
    (sweep_dir / "report" / "config.yaml").write_text(yaml.safe_dump(redact(cfg.model_dump()), sort_keys=False))
    try:  # whatever the live mirror missed (MLflow down for a while), then the sweep's own run
        backfill(cfg, tracker, parent_id)
        publish(tracker, parent_id, summary, sweep_dir / "report", ok=not failed)
        where = f"MLflow: {redact_text(uri)} (experiment {cfg.name!r}; `rightsweep ui` to browse)"
    except Exception as e:  # the sweep is done and on storage; only the mirror is behind
        log.warning("MLflow unavailable at the end of the sweep (%s: %s)", type(e).__name__, redact_text(str(e))[:300])
        where = (f"MLflow at {redact_text(uri)} is behind: once it is back, run `rightsweep sync --experiment {cfg.name}` "
                 f"(with --set storage={cfg.storage} if that is not your default)")
    print(f"Pareto plot: {paths['png']}\ntable: {paths['csv']}\n{where}")
    if failed:
        print(f"{len(failed)} trial(s) failed: {', '.join(map(str, failed))}")
    return summary


@contextlib.contextmanager
def tracking_errors(uri: str):
    """Before any training, a wrong or stopped tracking server is a config problem."""
    try:
        yield
    except Exception as e:
        raise ConfigError(f"tracking.tracking_uri: MLflow at {redact_text(uri)} cannot be used ({type(e).__name__}: "
                          f"{redact_text(str(e))[:200]}); start it, or leave tracking_uri unset for a store under storage") from None


def open_tracker(cfg: ExperimentConfig, uri: str):
    from orchestrator.tracking import Tracker

    with tracking_errors(uri):
        return Tracker(uri, cfg.name, cfg.storage)


def publish(tracker, parent_id: str, summary: Summary, report_dir: Path, ok: bool = True) -> None:
    """The sweep's artifacts, f*, hypervolumes and their reference point on the parent run, and its end."""
    for f in sorted(report_dir.iterdir()):
        tracker.client.log_artifact(parent_id, str(f))
    from mlflow.entities import Metric

    # Metrics and a tag, not params: a front rebuilt from part of a sweep has another f* and
    # reference point than the finished sweep, and MLflow refuses to change a param.
    ref = summary.reference_point
    metrics = {f"hypervolume/{k}": v for k, v in summary.hypervolume.items()}
    metrics.update({"hypervolume_reference/sft": ref[0], "hypervolume_reference/dpo": ref[1]})
    if summary.anchors is not None:
        metrics.update({"f_star/sft": summary.anchors.f_star_sft, "f_star/dpo": summary.anchors.f_star_dpo})
    now = int(time.time() * 1000)
    tracker.client.log_batch(parent_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    tracker.set_tags(parent_id, {"hypervolume_reference": summary.reference_rule})
    tracker.finish(parent_id, ok)
