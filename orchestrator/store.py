"""Rebuild a sweep's front from the MLflow store alone (finished or interrupted sweeps)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

from orchestrator.mirror import dedupe_steps
from orchestrator.pareto import Anchors, Summary, summarize
from orchestrator.report import write_artifacts
from orchestrator.sweep import finished_anchors, initial_point, publish, trial_result
from orchestrator.tracking import STAGE_TAG, TRIAL_TAG, Tracker

log = logging.getLogger("rightsweep.pareto")
KEYS = ("eval/sft_loss", "eval/dpo_loss", "eval/pref_accuracy", "time/train_s", "time/eval_s", "system/peak_mem_mb")


def rebuild(tracker: Tracker, out_dir: Path, publish_to_parent: bool = True, finished: bool | None = None) -> Summary:
    """The front of the sweep's latest parent run from its finished child runs; published
    on that run, which ends as ``finished`` says (default: as it stands)."""
    parent = tracker.latest_parent()
    if parent is None:
        raise LookupError("the experiment has no sweep run")
    runs = [r for r in tracker.child_runs(parent.info.run_id) if r.info.status == "FINISHED"]
    anchors_traj, main = {}, {}
    for run in runs:
        traj = dedupe_steps(tracker.trajectory(run.info.run_id, KEYS))
        if not traj:
            continue
        p = run.data.params
        point = {"schedule": p["schedule"], "lam": float(p["lam"]), "seed": int(p["seed"]), "stage": run.data.tags[STAGE_TAG]}
        target = anchors_traj if point["stage"] == "anchor" else main
        target[run.data.tags[TRIAL_TAG]] = (point, traj)
    if not main:
        raise LookupError(f"sweep run {parent.info.run_id} has no finished trial yet")
    params = parent.data.params
    given = [params.get(f"trial.train.f_star_{k}", "None") for k in ("sft", "dpo")]
    if "None" not in given:
        anchors = Anchors(float(given[0]), float(given[1]))
    else:  # as the driver does: from the anchor trials that finished (Sequential at λ = 0 is SFT alone)
        anchors = finished_anchors([({**point, "objective": "sft" if point["lam"] == 0.0 else "dpo"}, traj)
                                    for point, traj in anchors_traj.values()])
    results = [trial_result(tid, point, traj) for tid, (point, traj) in main.items()]
    all_traj = [traj for _, traj in [*main.values(), *anchors_traj.values()]]
    reference = params.get("sweep.hypervolume_reference", "None")
    numerics = {k.removeprefix("numerics."): v for k, v in params.items() if k.startswith("numerics.")}
    summary = summarize(results, anchors, initial_point(all_traj), None if reference == "None" else ast.literal_eval(reference), numerics)
    write_artifacts(summary, {tid: traj for tid, (_, traj) in main.items()}, out_dir)
    if publish_to_parent:
        publish(tracker, parent.info.run_id, summary, out_dir, ok=parent.info.status == "FINISHED" if finished is None else finished)
    log.info("front rebuilt from %d finished trial(s) of sweep run %s", len(results), parent.info.run_id)
    return summary
