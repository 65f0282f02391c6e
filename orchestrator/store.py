"""Rebuild a sweep's front from the MLflow store alone (finished or interrupted sweeps)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

from orchestrator.mirror import STOPPED_TAG, dedupe_steps
from orchestrator.pareto import (Anchors, Summary, anchor_behaviour, finished_anchors, initial_behaviour, initial_point,
                                 summarize, trial_result)
from orchestrator.report import write_artifacts
from orchestrator.space import Point
from orchestrator.tracking import STAGE_TAG, TRIAL_TAG, Tracker
from workers import metrics

log = logging.getLogger("rightsweep.pareto")
KEYS = (metrics.SFT_LOSS, metrics.DPO_LOSS, metrics.PREF_ACCURACY, metrics.TRAIN_S, metrics.EVAL_S, metrics.PEAK_MEM_MB,
        metrics.GEN_S, metrics.GEN_SFT_ACCURACY, metrics.GEN_PREF_WIN_RATE)


def run_point(params: dict, stage: str) -> Point:
    """A trial run's grid point from its MLflow params (an anchor is Sequential at λ = 0,
    SFT alone, or at λ = 1, DPO alone)."""
    lam = float(params["lam"])
    objective = ("sft" if lam == 0.0 else "dpo") if stage == "anchor" else None
    return Point(stage, params["schedule"], lam, int(params["seed"]), objective)


def given_anchors(params: dict) -> Anchors | None:
    """f* as the sweep's config gave it (its parent run's params), if it did."""
    given = [params.get(f"trial.train.f_star_{k}", "None") for k in metrics.OBJECTIVES]
    return None if "None" in given else Anchors(float(given[0]), float(given[1]))


def rebuild(tracker: Tracker, out_dir: Path, publish_to_parent: bool = True, finished: bool | None = None) -> Summary:
    """The front of the sweep's latest parent run from its finished child runs; published
    on that run, which ends as ``finished`` says (default: as it stands)."""
    parent = tracker.latest_parent()
    if parent is None:
        raise LookupError("the experiment has no sweep run")
    trials: dict[str, tuple[Point, list[dict]]] = {}
    for run in tracker.child_runs(parent.info.run_id):
        stopped = STOPPED_TAG in run.data.tags  # by the early stopping: on no front
        if run.info.status == "FINISHED" and not stopped and (traj := dedupe_steps(tracker.trajectory(run.info.run_id, KEYS))):
            point = run_point(run.data.params, run.data.tags[STAGE_TAG])
            if not point.is_anchor and (samples := tracker.samples(run.info.run_id, traj[-1][metrics.STEP])):
                traj[-1][metrics.SAMPLES] = samples  # the report's answers of the front points
            trials[run.data.tags[TRIAL_TAG]] = (point, traj)
    main = {label: (p, traj) for label, (p, traj) in trials.items() if not p.is_anchor}
    if not main:
        raise LookupError(f"sweep run {parent.info.run_id} has no finished trial yet")
    params = parent.data.params
    # As the driver does: f* from the config, else from the anchor trials that finished.
    anchors = given_anchors(params) or finished_anchors([(p.objective, traj) for p, traj in trials.values() if p.is_anchor])
    results = [trial_result(label, p.schedule, p.lam, p.seed, traj) for label, (p, traj) in main.items()]
    reference = params.get("sweep.hypervolume_reference", "None")
    numerics = {k.removeprefix("numerics."): v for k, v in params.items() if k.startswith("numerics.")}
    everything = [traj for _, traj in trials.values()]
    summary = summarize(results, anchors, initial_point(everything), None if reference == "None" else ast.literal_eval(reference),
                        numerics, initial_behaviour(everything),
                        anchor_behaviour([(p.objective, traj) for p, traj in trials.values() if p.is_anchor]))
    write_artifacts(summary, {label: traj for label, (_, traj) in main.items()}, out_dir,
                    Path(tracker.storage) / tracker.experiment)
    if publish_to_parent and (elsewhere := tracker.artifacts_elsewhere(parent)) is not None:
        log.warning("this store's artifacts are those of the folder it was copied from (%s): the front is written to %s "
                    "and not published in MLflow, which would write into that folder", elsewhere, out_dir)
    elif publish_to_parent:
        ok = parent.info.status == "FINISHED" if finished is None else finished
        tracker.publish_front(parent.info.run_id, summary, out_dir, ok=ok,
                              register=params.get("tracking.register_models", "True") == "True")
    log.info("front rebuilt from %d finished trial(s) of sweep run %s", len(results), parent.info.run_id)
    return summary
