"""Tune's trial results -> MLflow child runs: live while a sweep runs (``MlflowSync``, a
Tune callback), and afterwards from the results on storage (``backfill``: the end of a
sweep and ``rightsweep sync``).

What the trials left on storage is the record (``orchestrator.resume`` reads it, as JSON)
and MLflow mirrors it. A trial's MLflow run is found by its point's label, the same in
every run of a sweep. Every write is idempotent (``tracking.Tracker``), so mirroring again
adds what is missing and duplicates nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from orchestrator.config import ExperimentConfig
from orchestrator.redact import redact
from orchestrator.space import Point
from workers.metrics import STEP

log = logging.getLogger("rightsweep.mirror")
STOPPED_TAG = "rightsweep.stopped_at_step"
RETRY_AFTER_S = 30.0  # while MLflow is down, try it again at most this often
_URIS: dict[tuple[str, str], str] = {}  # (experiment, storage) -> tracking URI, in the driver's memory only


def trial_params(cfg: ExperimentConfig, point: Point) -> dict:
    """What a trial's MLflow run shows as params (``cfg`` without its tracking URI: Tune
    pickles the mirror, and the URI may hold a password)."""
    t = cfg.trial.train.model_copy(update=cfg.sweep.per_schedule.get(point.schedule, {}))
    m, d = cfg.trial.model, cfg.trial.data
    return redact({
        "schedule": point.schedule, "lam": point.lam, "seed": point.seed, "stage": point.stage,
        "k": t.maxright_eval_every, "total_steps": t.total_steps, "lr": t.lr, "beta": t.beta,
        "batch_size": t.batch_size, "model": m.name, "lora": m.lora.model_dump_json() if m.lora else "none",
        "sft_data": d.sft.source, "pref_data": d.pref.source, "num_workers": cfg.resources.num_workers,
    })


def stop_tags(stop: dict) -> dict:
    """A trial the early stopping ended: its run ends FINISHED, at the step these tags name,
    and is on no front."""
    return {STOPPED_TAG: stop["step"], "rightsweep.stopped_by": stop["by"]}


def dedupe_steps(points: list[dict]) -> list[dict]:
    """One point per step, the last reported: a resumed trial re-reports the steps after
    its checkpoint."""
    by_step = {int(p[STEP]): p for p in points}
    return [by_step[s] for s in sorted(by_step)]


class MlflowSync:
    """Mirrors Tune's trial results into MLflow child runs as they arrive.

    MLflow being down must not stop a sweep: a failed write is logged once per outage and
    MLflow is left alone for ``RETRY_AFTER_S`` (each try costs its HTTP retries); what was
    skipped is in Tune's results on storage, and ``backfill`` copies it later.
    Holds only plain values, so Tune can pickle it with the experiment state.
    """

    def __init__(self, uri: str, experiment: str, storage: str, parent_id: str, params: Callable[[Point], dict],
                 clock: Callable[[], float] = time.monotonic, connect: Callable[[], object] | None = None,
                 datasets: list[dict] = ()):
        self.experiment, self.storage, self.parent_id = experiment, storage, parent_id
        self.datasets = list(datasets)  # each trial run's inputs
        _URIS[(experiment, storage)] = uri
        self.params = params  # a point's params (an adaptive search adds points as it goes)
        self._clock = clock
        self._connect = connect  # a Tracker factory; default: a Tracker on the URI
        self._tracker = None
        self._runs: dict[str, str] = {}
        self._down_since: float | None = None

    def __getstate__(self):
        # Tune pickles its callbacks onto storage (tuner.pkl, which this project never loads).
        # The URI may hold a password, so it is not in this state.
        return {**self.__dict__, "_tracker": None, "_runs": {}}

    def _open(self):
        if self._connect is not None:
            return self._connect()
        from orchestrator.tracking import Tracker

        tracker = Tracker(_URIS[(self.experiment, self.storage)], self.experiment, self.storage)
        tracker.datasets = self.datasets
        return tracker

    def _call(self, fn):
        if self._down_since is not None and self._clock() - self._down_since < RETRY_AFTER_S:
            return None
        try:
            if self._tracker is None:
                self._tracker = self._open()
            out = fn(self._tracker)
        except Exception as e:  # any MLflow/transport failure
            if self._down_since is None:
                log.warning("MLflow unavailable (%s); the sweep goes on, its results stay in Tune's state under %s",
                            type(e).__name__, Path(self.storage) / self.experiment / "tune")
            self._down_since = self._clock()
            self._tracker = None
            return None
        if self._down_since is not None:
            log.info("MLflow is back; what it missed is copied at the end of the sweep")
            self._down_since = None
        return out

    def _run(self, tracker, trial, running: bool = False) -> str:
        point = Point.from_dict(trial.config["point"])
        if point.label not in self._runs:
            self._runs[point.label] = tracker.trial_run(self.parent_id, point.label, point.label, self.params(point),
                                                        point.stage, running)
        return self._runs[point.label]

    def start(self, trial) -> None:
        self._call(lambda t: self._run(t, trial, running=True))

    def result(self, trial, result: dict) -> None:
        if STEP in result:
            self._call(lambda t: t.log_points(self._run(t, trial), [result]))

    def complete(self, trial, ok: bool) -> None:
        from orchestrator import resume

        def done(t):
            run_id = self._run(t, trial)
            if ok and trial.last_result.get("time_total_s") is not None:
                t.set_tags(run_id, {"rightsweep.trial_wall_s": f"{trial.last_result['time_total_s']:.2f}"})
            label = Point.from_dict(trial.config["point"]).label
            stop = resume.read_json(resume.stop_file(Path(self.storage) / self.experiment, label), None)
            if stop:
                t.set_tags(run_id, stop_tags(stop))
            t.finish(run_id, ok)

        self._call(done)


def tune_callback(sync: MlflowSync):
    from ray.tune import Callback

    class _Cb(Callback):
        def __init__(self):
            self.sync = sync

        def on_trial_start(self, iteration, trials, trial, **info):
            self.sync.start(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.sync.result(trial, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.sync.complete(trial, ok=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.sync.complete(trial, ok=False)

    return _Cb()


def backfill(cfg: ExperimentConfig, tracker, parent_id: str) -> tuple[int, int]:
    """Copy every trial the sweep ``cfg.name`` left on storage into MLflow: its child run
    (found by label, or created), the points it lacks, its end status. Returns (runs, new
    points). Reads only JSON files on storage (no Ray, no pickles)."""
    from orchestrator import resume

    sweep_dir = Path(cfg.storage) / cfg.name
    stops = resume.stopped(sweep_dir)
    runs = points = 0
    for point in resume.sweep_points_on_storage(cfg, sweep_dir):
        label = point.label
        reported = resume.reported_points(sweep_dir, label)
        if not reported and not resume.trial_dirs(sweep_dir, label):
            continue  # never started
        run_id = tracker.trial_run(parent_id, label, label, trial_params(cfg, point), point.stage)
        runs += 1
        points += tracker.log_points(run_id, reported)
        if resume.finished_trajectory(sweep_dir, label) is not None:
            tracker.finish(run_id, ok=True)
        elif label in stops:
            tracker.set_tags(run_id, stop_tags(stops[label]))
            tracker.finish(run_id, ok=True)
        elif resume.failed(sweep_dir, label):
            tracker.finish(run_id, ok=False)
    return runs, points
