"""The sweep driver: shared preparation, the grid (anchors and main trials), the report.

Runs where ``rightsweep sweep`` (or ``ray job submit … sweep``) starts it. The grid is one
Tune experiment under ``<storage>/<name>/tune/``; ``--resume`` runs a fresh one over what
did not finish, found from plain files on storage (``orchestrator.resume``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from orchestrator.cluster import disconnect
from orchestrator.config import ConfigError, ExperimentConfig, TrackingSpec
from orchestrator.mirror import MlflowSync, backfill, trial_params, tune_callback
from orchestrator.pareto import (Anchors, Summary, anchor_behaviour, finished_anchors, initial_behaviour, initial_point,
                                 summarize, trial_result)
from orchestrator.redact import redact, redact_text
from orchestrator.report import format_table, search_lines, write_artifacts
from orchestrator import resume as stored
from orchestrator.space import Point

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


def max_concurrent(cfg: ExperimentConfig, n_trials: int) -> int:
    """The config's ``sweep.max_concurrent_trials``, else ``cluster.trial_slots``."""
    from orchestrator.cluster import trial_slots

    if cfg.sweep.max_concurrent_trials:
        n, why = cfg.sweep.max_concurrent_trials, "sweep.max_concurrent_trials"
    else:
        n, why = trial_slots(cfg.resources.per_trial(), n_trials)
    log.info("up to %d of the %d trials at once (%s)", n, n_trials, why)
    return n


class _NoTuneRestoreHint(logging.Filter):
    """Tune's own "Resume experiment with: Tuner.restore(...)" would load its pickled state;
    the sweep's own line says how to continue (``--resume``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


@dataclass
class Grid:
    """How the grid's points stand after a run of the sweep, by label."""

    finished: dict[str, tuple[Point, list[dict]]]  # with their trajectories
    failed: list[str]
    unfinished: list[str]  # none of these: the sweep was interrupted
    stopped: dict[str, dict] = field(default_factory=dict)  # by the early stopping: {step, by}


def run_grid(cfg: ExperimentConfig, points: list[Point], anchors: Anchors | None, sync: MlflowSync | None, resume: bool) -> Grid:
    """A fresh Tune experiment over the points that have not finished (on ``resume``, those
    of earlier runs of the sweep are kept; an unfinished local-mode trial continues from its
    latest whole checkpoint). Tune's own saved state is never loaded (``orchestrator.resume``)."""
    sweep_dir = Path(cfg.storage) / cfg.name
    stops = stored.stopped(sweep_dir)
    todo = [p for p in points if not (resume and (p.label in stops or stored.finished_trajectory(sweep_dir, p.label) is not None))]
    resume_from = {}
    if resume:
        local = cfg.resources.num_workers == 0
        resume_from = {p.label: c for p in todo if local and (c := stored.latest_checkpoint(sweep_dir, p.label))}
        log.info("resuming: %d of %d trials had finished; %d continue from a checkpoint", len(points) - len(todo),
                 len(points), len(resume_from))
    errors = {}
    if todo:
        tuner = build_tuner(cfg, todo, anchors, sync, resume_from)
        catch_sigterm()  # Ray is running in this process now
        errors = {Point.from_dict(r.config["point"]).label: r.error for r in tuner.fit() if r.error is not None}
    # With the cells an adaptive search added.
    grid = sort_trials(stored.sweep_points_on_storage(cfg, sweep_dir), stored.stopped(sweep_dir),
                       lambda label: stored.finished_trajectory(sweep_dir, label), errors)
    for label in grid.failed:
        log.warning("trial %s failed: %s", label, (str(errors[label]).strip().splitlines() or ["?"])[-1][:500])
    return grid


def sort_trials(points: list[Point], stops: dict[str, dict], trajectory, errors: dict) -> Grid:
    """Each point stopped, finished (``trajectory(label)`` is its finished trajectory or
    None), failed or unfinished. A stop stands even when the trial ran to its end before it
    saw its stop file (its last steps raced the driver's judgement): the front must not hang
    on that race."""
    grid = Grid({}, [], [])
    for p in points:
        if p.label in stops:
            grid.stopped[p.label] = stops[p.label]
        elif (traj := trajectory(p.label)) is not None:
            grid.finished[p.label] = (p, traj)
        elif p.label in errors:
            grid.failed.append(p.label)
        else:
            grid.unfinished.append(p.label)
    return grid


def build_tuner(cfg: ExperimentConfig, points: list[Point], anchors: Anchors | None, sync: MlflowSync | None,
                resume_from: dict[str, str]):
    """One Tune trial per point, each a ``tune_trial`` (a ``TorchTrainer``), named by its label."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from orchestrator.console import console
    from orchestrator.trial import anchor_watch, tune_trial

    logging.getLogger("ray.tune.tune").addFilter(_NoTuneRestoreHint())
    sweep_dir = Path(cfg.storage) / cfg.name
    local = cfg.resources.num_workers == 0
    # Trials never talk to MLflow (the driver mirrors their results), so its URI, which may
    # carry a password, stays out of what Tune pickles onto storage.
    trainable = tune.with_parameters(tune_trial, experiment=cfg.model_dump(exclude={"tracking"}),
                                     anchors=asdict(anchors) if anchors else None, resume_from=resume_from)
    # With workers, the trial process only drives a TorchTrainer and reserves no CPU (a
    # token of memory, as Ray refuses an empty bundle); in local mode it trains.
    trainable = tune.with_resources(trainable, cfg.resources.per_process() if local else {"memory": DRIVER_MEMORY})
    label = lambda t: Point.from_dict(t.config["point"]).label  # noqa: E731
    adaptive, stopping = cfg.sweep.search == "adaptive", cfg.sweep.early_stop is not None
    if adaptive or stopping:
        from orchestrator.search import AdaptiveSearch, ParetoStop
    on_storage = stored.sweep_points_on_storage(cfg, sweep_dir)
    cells = {(p.schedule, p.lam) for p in on_storage if not p.is_anchor}
    n_trials = len(points) + (cfg.cell_budget - len(cells)) * len(cfg.sweep.seeds)  # the grid's, or at most the search's
    slots = max_concurrent(cfg, n_trials if adaptive else len(points))
    # Tune's JSON results alone (orchestrator.resume reads them): its CSV and TensorBoard
    # loggers would only write copies, and TensorBoard's warns about the sample tables.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    return tune.Tuner(
        trainable,
        # Plain dicts: Tune writes them into each trial's params.json, readable without unpickling.
        param_space={} if adaptive else {"point": tune.grid_search([p.as_dict() for p in points])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=slots,
            search_alg=AdaptiveSearch(cfg, points) if adaptive else None,
            num_samples=-1 if adaptive else 1,  # the search says when it is done
            scheduler=ParetoStop(cfg, on_storage) if stopping else None,
            # A trial process is kept for the next trial: its imports (torch, transformers,
            # datasets: most of a short trial's fixed cost) are paid once per slot. An early
            # stopped trial ends itself, so its process is free to be kept too.
            reuse_actors=True,
            trial_name_creator=label,
            trial_dirname_creator=lambda t: f"{label(t)}-{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=stored.next_experiment(sweep_dir),
            storage_path=str(sweep_dir / "tune"),
            # A local-mode trial whose process dies is retried by Tune, from its last
            # checkpoint; with workers, Ray Train restarts them (resources.max_failures).
            failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures if local else 0),
            callbacks=[JsonLoggerCallback(), anchor_watch(sweep_dir),
                       console(n_trials if adaptive else len(points), slots, adaptive, sweep_dir),
                       *([tune_callback(sync)] if sync else [])],
            verbose=0,  # orchestrator.console instead
        ),
    )


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
    hold_lock(cfg)
    sweep_dir = open_sweep_dir(cfg, resume)
    state = (stored.SweepState.load(sweep_dir) if resume else None) or stored.SweepState()
    tracker, uri = start(cfg, state, sweep_dir)
    with tracker.system_metrics(state.parent_run_id, cfg.tracking.system_metrics_every_s):
        # One Tune experiment for the whole grid, so trial processes (and their imports) are
        # reused from the anchors to the last trial.
        points = stored.sweep_points_on_storage(cfg, sweep_dir)
        given = Anchors(cfg.trial.train.f_star_sft, cfg.trial.train.f_star_dpo) if cfg.anchors_given else None
        sync = MlflowSync(uri, cfg.name, cfg.storage, state.parent_run_id,
                          functools.partial(trial_params, cfg.model_copy(update={"tracking": TrackingSpec()})), datasets=state.datasets)
        grid = run_grid_to_its_end(cfg, points, given, sync, resume, tracker, state.parent_run_id)
        summary = build_front(cfg, grid, given, state.numerics)
        if summary.anchors is not None:
            state.f_star_sft, state.f_star_dpo = summary.anchors.f_star_sft, summary.anchors.f_star_dpo
        state.finished, state.failed = True, grid.failed
        state.save(sweep_dir)
        print(format_table(summary), flush=True)
        search = search_record(cfg, sweep_dir, summary)
        print("\n".join(search_lines(search)), flush=True)
        write_report(cfg, summary, grid, tracker, state.parent_run_id, uri)
        (sweep_dir / "report" / "search.json").write_text(json.dumps(search, indent=1))
    return summary


def search_record(cfg: ExperimentConfig, sweep_dir: Path, summary: Summary) -> dict:
    """How the sweep chose and cut its trials, and what it spent (report/search.json)."""
    return {"adaptive": cfg.sweep.search == "adaptive", "early_stop": cfg.sweep.early_stop is not None,
            "proposals": stored.proposals(sweep_dir), "stopped": stored.stopped(sweep_dir),
            "compute": stored.compute_spent(cfg, sweep_dir), "hypervolume": summary.hypervolume["all"]}


def open_sweep_dir(cfg: ExperimentConfig, resume: bool) -> Path:
    """The sweep's folder; a finished or stopped sweep of the same name is moved aside unless resumed."""
    sweep_dir = Path(cfg.storage) / cfg.name
    if not resume and sweep_dir.exists() and (sweep_dir / "tune").exists():
        moved = sweep_dir.with_name(f"{cfg.name}-prev-{time.strftime('%Y%m%d-%H%M%S')}")
        sweep_dir.rename(moved)
        log.info("a previous sweep %r was moved to %s (use --resume to continue one instead)", cfg.name, moved)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return sweep_dir


def start(cfg: ExperimentConfig, state: stored.SweepState, sweep_dir: Path):
    """Ray, the shared inputs and the sweep's MLflow run (a resumed sweep's own again);
    the state saved with them. Returns (tracker, tracking URI)."""
    from orchestrator.tracking import tracking_uri
    from orchestrator.trial import connect_and_prepare

    uri = tracking_uri(cfg.tracking.tracking_uri, cfg.storage)
    # MLflow's store (seconds: imports, a new database's tables) is opened while Ray starts
    # and the shared inputs are built: none needs the others, and all come before a trial.
    with ThreadPoolExecutor(max_workers=1) as pool:
        opening = pool.submit(open_tracker, cfg, uri)
        prepared = connect_and_prepare(cfg.trial, cfg.resources)
        tracker = opening.result()
    numerics, tracker.datasets = prepared["numerics"], prepared["datasets"]
    log.info("numerics: %s", ", ".join(f"{k}={v}" for k, v in numerics.items()))
    with tracking_errors(uri):  # only now: a sweep refused above leaves no run behind
        params = {**redact(flatten(cfg.model_dump())), **{f"numerics.{k}": v for k, v in numerics.items()}}
        state.parent_run_id = tracker.start_parent(cfg.name, params, state.parent_run_id)
    # What `rightsweep sync` needs to mirror this sweep later: its run and its config.
    state.tracking_uri, state.config, state.numerics, state.finished = redact_text(uri), redact(cfg.model_dump()), numerics, False
    state.datasets = tracker.datasets
    state.save(sweep_dir)
    log.info("MLflow: experiment %r, parent run %s, store %s", cfg.name, state.parent_run_id, redact_text(uri))
    return tracker, uri


def run_grid_to_its_end(cfg: ExperimentConfig, points: list[Point], given: Anchors | None, sync: MlflowSync, resume: bool,
                        tracker, parent_id: str) -> Grid:
    """The grid, or ``Interrupted`` when a signal stopped it before every trial ended."""
    before = resident_mb()
    try:
        grid = run_grid(cfg, points, given, sync, resume)
    except KeyboardInterrupt:  # before Tune took over the signal
        grid = Grid({}, [], [p.label for p in points])
    disconnect()
    n = len(grid.finished) + len(grid.failed) + len(grid.unfinished) + len(grid.stopped)
    log.info("driver memory: %.0f MB resident as the grid started, %.0f MB after its %d trials", before, resident_mb(), n)
    if grid.unfinished:
        stop_interrupted(tracker, parent_id)
        raise Interrupted(signal.SIGINT, f"{len(grid.finished)} of {n} trials finished, {len(grid.failed)} failed, "
                                         f"{len(grid.unfinished)} did not finish; nothing was built from those")
    return grid


def build_front(cfg: ExperimentConfig, grid: Grid, given: Anchors | None, numerics: dict[str, str]) -> Summary:
    """f* (given, or from the finished anchor trials) and the front of the finished main trials."""
    anchors = given or finished_anchors([(p.objective, traj) for p, traj in grid.finished.values() if p.is_anchor])
    if anchors is None:
        log.warning("no f*: %s; gaps and ideal distances are not computed",
                    "sweep.anchors is off and trial.train gives none" if not cfg.sweep.anchors else f"anchor trials failed ({grid.failed})")
    else:
        log.info("anchors: f*_SFT=%.4f f*_DPO=%.4f", anchors.f_star_sft, anchors.f_star_dpo)
    results = [trial_result(label, p.schedule, p.lam, p.seed, traj) for label, (p, traj) in grid.finished.items() if not p.is_anchor]
    if not results:
        raise RuntimeError(f"every trial of the sweep failed: {grid.failed}")
    everything = [traj for _, traj in grid.finished.values()]
    return summarize(results, anchors, initial_point(everything), cfg.sweep.hypervolume_reference, numerics,
                     initial_behaviour(everything), anchor_behaviour([(p.objective, traj) for p, traj in grid.finished.values()
                                                                      if p.is_anchor]))


def write_report(cfg: ExperimentConfig, summary: Summary, grid: Grid, tracker, parent_id: str, uri: str) -> None:
    """The report on storage, then in MLflow: whatever the live mirror missed (MLflow down
    for a while), and the front on the sweep's own run."""
    report_dir = Path(cfg.storage) / cfg.name / "report"
    paths = write_artifacts(summary, {label: traj for label, (p, traj) in grid.finished.items() if not p.is_anchor}, report_dir,
                            report_dir.parent)
    (report_dir / "config.yaml").write_text(yaml.safe_dump(redact(cfg.model_dump()), sort_keys=False))
    try:
        backfill(cfg, tracker, parent_id)
        models = tracker.publish_front(parent_id, summary, report_dir, ok=not grid.failed, register=cfg.tracking.register_models)
        where = f"MLflow: {redact_text(uri)} (experiment {cfg.name!r}; `rightsweep ui` to browse)\n{models}"
    except Exception as e:  # the sweep is done and on storage; only the mirror is behind
        log.warning("MLflow unavailable at the end of the sweep (%s: %s)", type(e).__name__, redact_text(str(e))[:300])
        where = (f"MLflow at {redact_text(uri)} is behind: once it is back, run `rightsweep sync --experiment {cfg.name}` "
                 f"(with --set storage={cfg.storage} if that is not your default)")
    print(f"Pareto plot: {paths['png']}\ntable: {paths['csv']}\nthe front points' answers: {paths['samples']}\n{where}")
    if grid.failed:
        print(f"{len(grid.failed)} trial(s) failed: {', '.join(map(str, grid.failed))}")


def stop_interrupted(tracker, parent_id: str) -> None:
    """An interrupted sweep's unfinished trial runs and its own run end KILLED."""
    try:
        tracker.kill_running(parent_id)
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
