"""The adaptive λ search and the Pareto-aware early stopping as Tune components, so they
run on a cluster, with concurrency, and survive ``--resume``: what they decide is written
to storage as JSON (``search.json``, ``trials/<label>/stopped.json``) before it takes effect, and a
resumed sweep rebuilds both from storage alone (``orchestrator.resume``).

The choices themselves are pure: ``orchestrator.adaptive`` and ``orchestrator.earlystop``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from orchestrator import resume as stored
from orchestrator.adaptive import propose
from orchestrator.config import ExperimentConfig
from orchestrator.earlystop import Dominance, Rule, Stop
from orchestrator.pareto import hypervolume_reference, initial_point
from orchestrator.space import Point, main_points
from workers import metrics

log = logging.getLogger("rightsweep.search")


def losses(row: dict) -> tuple[float, float]:
    return float(row[metrics.SFT_LOSS]), float(row[metrics.DPO_LOSS])


class AdaptiveSearch(Searcher):
    """Tune asks for a trial; this hands out the anchors and the coarse grid first, then each
    cell ``orchestrator.adaptive.propose`` finds (every seed of it), until ``budget`` cells.

    What the trials did is read from storage (their trajectories and stops) at
    each proposal, so the searcher keeps no model of its own to save: a resumed sweep builds
    a new one with the points still to run, and the proposals on storage are never made twice.
    """

    def __init__(self, cfg: ExperimentConfig, todo: list[Point]):
        super().__init__()
        self.cfg, self.sweep_dir = cfg, Path(cfg.storage) / cfg.name
        self.queue = list(todo)
        self.live: dict[str, Point] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the points are this searcher's own; there is no objective for Tune to rank

    def suggest(self, trial_id: str):
        if not self.queue:
            self._propose()
        if self.queue:
            self.live[trial_id] = self.queue.pop(0)
            return {"point": self.live[trial_id].as_dict()}
        return None if self.live else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self.live.pop(trial_id, None)

    def _propose(self) -> None:
        points = stored.sweep_points_on_storage(self.cfg, self.sweep_dir)
        main = {(p.schedule, p.lam) for p in points if not p.is_anchor}
        if len(main) >= self.cfg.cell_budget:
            return
        anchors = [p for p in points if p.is_anchor]
        done = {p: t for p in points if (t := stored.finished_trajectory(self.sweep_dir, p.label)) is not None}
        if any(a not in done for a in anchors):
            return  # the ends of every schedule's front
        ends = {lam: tuple(np.mean([losses(done[a][-1]) for a in anchors if a.lam == lam], axis=0))
                for lam in (0.0, 1.0) if anchors}
        stops = stored.stopped(self.sweep_dir)
        cells: dict[str, dict[float, tuple[float, float]]] = {s: {} for s in self.cfg.sweep.schedules}
        occupied: dict[str, set[float]] = {s: set() for s in self.cfg.sweep.schedules}
        for schedule, lam in main:
            seeds = [p for p in points if (p.schedule, p.lam) == (schedule, lam) and not p.is_anchor]
            if all(p in done for p in seeds) and not any(p.label in stops for p in seeds):
                cells[schedule][lam] = tuple(np.mean([losses(done[p][-1]) for p in seeds], axis=0))
            else:
                occupied[schedule].add(lam)
        # The box the report will score: every finished main trial's end point and the initial model.
        ends_of_trials = [losses(t[-1]) for p, t in done.items() if not p.is_anchor and p.label not in stops]
        reference, _ = hypervolume_reference(ends_of_trials, initial_point(list(done.values())),
                                             self.cfg.sweep.hypervolume_reference)
        found = propose(cells, occupied, ends, self.cfg.sweep.min_width, reference)
        if found is None:
            return
        record = stored.proposals(self.sweep_dir)
        record.append({"schedule": found.schedule, "lam": found.lam, "reason": found.reason,
                       "known_cells": sum(len(c) for c in cells.values())})
        stored.save_proposals(self.sweep_dir, record)
        log.info("adaptive search: cell %d of %d is %s λ=%g, %s", len(main) + 1, self.cfg.cell_budget,
                 found.schedule, found.lam, found.reason)
        self.queue.extend(main_points([found.schedule], [found.lam], self.cfg.sweep.seeds))

    def save(self, checkpoint_path: str) -> None:
        pass  # its state is on storage already (search.json), and Tune's pickles are never loaded

    def restore(self, checkpoint_path: str) -> None:
        pass


class ParetoStop(FIFOScheduler):
    """Stops a trial that other trials beat in both losses at the same steps
    (``orchestrator.earlystop``); the stop is on storage before Tune acts on it. A trial's
    last evaluation is never a stop: it has finished."""

    def __init__(self, cfg: ExperimentConfig, points: list[Point]):
        super().__init__()
        spec = cfg.sweep.early_stop
        self.sweep_dir = Path(cfg.storage) / cfg.name
        self.dominance = Dominance(Rule(cfg.grace, spec.epsilon, spec.patience, tuple(spec.protect)))
        self.last_step = {s: cfg.trial.train.model_copy(update=cfg.sweep.per_schedule.get(s, {})).total_steps
                          for s in cfg.sweep.schedules}
        stops = stored.stopped(self.sweep_dir)
        for p in points:  # a resumed sweep's earlier trials are compared against, as they were
            for row in stored.reported_points(self.sweep_dir, p.label):
                self.dominance.record(p.label, p.seed, int(row[metrics.STEP]), losses(row))
            if p.label in stops:
                cell = (p.schedule, p.lam)
                self.dominance.stopped_cells[cell] = Stop(p.label, cell, stops[p.label]["step"], stops[p.label]["by"])

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if metrics.SFT_LOSS not in result:
            return TrialScheduler.CONTINUE
        p = Point.from_dict(trial.config["point"])
        stop = self.dominance.observe(p.label, p.schedule, p.lam, p.seed, p.is_anchor, int(result[metrics.STEP]),
                                      losses(result))
        if stop is None or int(result[metrics.STEP]) >= self.last_step.get(p.schedule, 0):
            return TrialScheduler.CONTINUE
        # The trial ends itself at its next step (``stored.stop_file``): Tune's STOP would
        # kill its process and leave a Train run's workers holding their CPUs.
        judged = {k: v for k, v in result.items() if k == metrics.STEP or k.startswith(metrics.TRAJECTORY_PREFIXES)}
        stored.record_stop(self.sweep_dir, p.label, stop.step, stop.by, judged)
        log.info("early stop: %s at step %d, beaten by %s", p.label, stop.step, stop.by)
        return TrialScheduler.CONTINUE
