"""The sweep driver: shared preparation, the grid (anchors and main trials), the report.

Runs where ``rightsweep sweep`` (or ``ray job submit … sweep``) starts it. The grid is one
Tune experiment under ``<storage>/<name>/tune/``; ``--resume`` runs a fresh one over what
did not finish, found from plain files on storage (``orchestrator.resume``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import yaml

from orchestrator.config import ConfigError, ExperimentConfig
from orchestrator.mirror import MlflowSync, backfill, trial_params, tune_callback
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


class _NoTuneRestoreHint(logging.Filter):
    """Tune's own "Resume experiment with: Tuner.restore(...)" would load its pickled state;
    the sweep's own line says how to continue (``--resume``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


def run_grid(cfg: ExperimentConfig, points: list[dict], anchors: Anchors | None, sync: MlflowSync | None, resume: bool):
    """A fresh Tune experiment over the points that have not finished (on ``resume``, those
    of earlier runs of the sweep are kept; an unfinished local-mode trial continues from its
    latest whole checkpoint). Tune's own saved state is never loaded (``orchestrator.resume``).
    Returns ({label: (point, trajectory)} of the finished points, failed labels, unfinished labels)."""
    from ray import tune

    from orchestrator import resume as stored
    from orchestrator.trial import anchor_watch, tune_trial

    logging.getLogger("ray.tune.tune").addFilter(_NoTuneRestoreHint())
    sweep_dir = Path(cfg.storage) / cfg.name
    local = cfg.resources.num_workers == 0
    todo = [p for p in points if not (resume and stored.finished_trajectory(sweep_dir, trial_label(p)) is not None)]
    resume_from = {}
    if resume:
        resume_from = {trial_label(p): c for p in todo if local and (c := stored.latest_checkpoint(sweep_dir, trial_label(p)))}
        log.info("resuming: %d of %d trials had finished; %d continue from a checkpoint", len(points) - len(todo),
                 len(points), len(resume_from))
    errors = {}
    if todo:
        # Trials never talk to MLflow (the driver mirrors their results), so its URI, which may
        # carry a password, stays out of what Tune pickles onto storage.
        trainable = tune.with_parameters(tune_trial, experiment=cfg.model_dump(exclude={"tracking"}),
                                         anchors=asdict(anchors) if anchors else None, resume_from=resume_from)
        # With workers, the trial process only drives a TorchTrainer and reserves no CPU (a
        # token of memory, as Ray refuses an empty bundle); in local mode it trains.
        trainable = tune.with_resources(trainable, cfg.resources.per_process() if local else {"memory": DRIVER_MEMORY})
        tuner = tune.Tuner(
            trainable,
            param_space={"point": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=max_concurrent(cfg, len(todo)),
                # A trial process is kept for the next trial: its imports (torch, transformers,
                # datasets: most of a short trial's fixed cost) are paid once per slot.
                reuse_actors=True,
                trial_name_creator=lambda t: trial_label(t.config["point"]),
                trial_dirname_creator=lambda t: f"{trial_label(t.config['point'])}-{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=stored.next_experiment(sweep_dir),
                storage_path=str(sweep_dir / "tune"),
                # A local-mode trial whose process dies is retried by Tune, from its last
                # checkpoint; with workers, Ray Train restarts them (resources.max_failures).
                failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures if local else 0),
                callbacks=[anchor_watch(sweep_dir), *([tune_callback(sync)] if sync else [])],
                verbose=1,
            ),
        )
        catch_sigterm()  # Ray is running in this process now
        errors = {trial_label(r.config["point"]): r.error for r in tuner.fit() if r.error is not None}
    finished, failed, unfinished = {}, [], []
    for p in points:
        label = trial_label(p)
        if (traj := stored.finished_trajectory(sweep_dir, label)) is not None:
            finished[label] = (p, traj)
        elif label in errors:
            failed.append(label)
            log.warning("trial %s failed: %s", label, (str(errors[label]).strip().splitlines() or ["?"])[-1][:500])
        else:
            unfinished.append(label)
    return finished, failed, unfinished


class Interrupted(Exception):
    """The sweep was stopped by a signal; nothing was built from its unfinished trials."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


_CAUGHT: list[int] = []  # the stop signals this driver received


def _on_sigterm(signum, frame):
    _CAUGHT.append(signum)
    signal.raise_signal(signal.SIGINT)


def catch_sigterm() -> None:
    """SIGTERM stops a sweep as Ctrl-C does: Tune's own SIGINT handler ends the experiment
    cleanly (outside it, Python raises KeyboardInterrupt). Installed again once Ray runs in
    this process: Ray's core worker puts its own SIGTERM handler in, which exits at once."""
    signal.signal(signal.SIGTERM, _on_sigterm)


_LOCKS: list = []  # open lock files: a lock lives as long as this process


def hold_lock(cfg: ExperimentConfig) -> None:
    """One driver per sweep name and storage: a second one would interleave its trials,
    checkpoints and MLflow runs with the first's."""
    import fcntl
    import socket

    f = open(Path(cfg.storage) / f".{cfg.name}.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ConfigError(f"name: sweep {cfg.name!r} is already running on {cfg.storage} ({holder}); wait for it to "
                          "end, or choose another name") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    f.flush()
    _LOCKS.append(f)


def resident_mb() -> float:
    with contextlib.suppress(OSError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line.split()[1] for line in status if line.startswith("VmRSS:"))) / 1024
    return math.nan


def run_sweep(cfg: ExperimentConfig, resume: bool = False) -> Summary:
    """The whole sweep; a SIGINT or SIGTERM ends it as ``Interrupted`` (the CLI exits 130 or
    143), with its unfinished trials' MLflow runs KILLED and nothing reported from them."""
    _CAUGHT.clear()
    previous = signal.getsignal(signal.SIGTERM)
    catch_sigterm()
    try:
        return _run_sweep(cfg, resume)
    except KeyboardInterrupt:
        raise Interrupted(_CAUGHT[0] if _CAUGHT else signal.SIGINT, "stopped before any trial started") from None
    except Interrupted as e:
        e.signum = _CAUGHT[0] if _CAUGHT else e.signum
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_sweep(cfg: ExperimentConfig, resume: bool) -> Summary:
    from orchestrator.tracking import tracking_uri
    from orchestrator.trial import connect_and_prepare

    hold_lock(cfg)
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
    state.update(parent_run_id=parent_id, tracking_uri=redact_text(uri), config=redact(cfg.model_dump()), numerics=numerics,
                 finished=False)
    state_file.write_text(json.dumps(state, indent=1))
    log.info("MLflow: experiment %r, parent run %s, store %s", cfg.name, parent_id, redact_text(uri))

    # One Tune experiment for the whole grid, so trial processes (and their imports) are
    # reused from the anchors to the last trial.
    points = sweep_points(cfg.sweep.schedules, cfg.sweep.lams, cfg.sweep.seeds, with_anchors=cfg.sweep.anchors and not cfg.anchors_given)
    given = Anchors(cfg.trial.train.f_star_sft, cfg.trial.train.f_star_dpo) if cfg.anchors_given else None
    sync = MlflowSync(uri, cfg.name, cfg.storage, parent_id, {trial_label(p): trial_params(cfg, p) for p in points})
    before = resident_mb()
    try:
        done, failed, unfinished = run_grid(cfg, points, given, sync, resume)
    except KeyboardInterrupt:  # before Tune took over the signal
        unfinished, done, failed = [trial_label(p) for p in points], {}, []
    log.info("driver memory: %.0f MB resident as the grid started, %.0f MB after its %d trials", before, resident_mb(), len(points))
    if unfinished:
        stop_interrupted(tracker, sync, parent_id, unfinished)
        raise Interrupted(signal.SIGINT, f"{len(done)} of {len(points)} trials finished, {len(failed)} failed, "
                                         f"{len(unfinished)} did not finish; nothing was built from those")
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


def stop_interrupted(tracker, sync: MlflowSync, parent_id: str, unfinished: list[str]) -> None:
    """An interrupted sweep's unfinished trial runs and its own run end KILLED."""
    sync.killed(unfinished)
    try:
        tracker.finish(parent_id, status="KILLED")
    except Exception as e:  # MLflow down too: the runs stay RUNNING until `sync` or --resume
        log.warning("MLflow unavailable (%s); the sweep's run is left RUNNING", type(e).__name__)


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
