"""Fault: the driver of an adaptive, early-stopped sweep dies mid-sweep (kill -9), after the
search proposed its first cell. The front is rebuilt from the trials that finished;
``rightsweep sweep --resume`` finishes the sweep without rerunning them, proposes no cell
twice, reruns no stopped trial, and MLflow ends with exactly one child run per trial, none
left running."""

import json
import os
import signal
import subprocess
import sys
import time

from orchestrator.mirror import STOPPED_TAG
from tests.support.mlflowserver import store

PY = sys.executable


def finished_main_runs(storage, experiment) -> int:
    """Main trials that ran to their end."""
    try:
        client = store(storage)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return 0
        found = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'main' and attributes.status = 'FINISHED'")
        return len([r for r in found if STOPPED_TAG not in r.data.tags])  # a stopped trial is on no front
    except Exception:  # the store may not exist yet
        return 0


def proposals(sweep_dir) -> list[dict]:
    try:
        return json.loads((sweep_dir / "search.json").read_text())["proposals"]
    except (OSError, ValueError):  # not written yet
        return []


def test_a_killed_adaptive_sweep_builds_its_front_and_resumes_proposing_no_cell_twice(head, tmp_path):
    storage = tmp_path / "storage"
    sweep_dir = storage / "interrupted"
    # 2 anchors, a coarse grid of 4 schedules × 2 λ, 2 cells proposed; both MAXRIGHT trials are
    # beaten at step 20 (by Mix λ 0.25: 2.35 vs 4.16 SFT, 0.85 vs 0.95 DPO) and stopped.
    cmd = [PY, "-m", "orchestrator", "sweep", "--config", "smoke", "--set", f"storage={storage}",
           "--set", "name=interrupted", "--set", "sweep.lams=[0.25, 0.75]", "--set", "sweep.search=adaptive",
           "--set", "sweep.budget=10", "--set", "sweep.early_stop={grace: 20, patience: 1, epsilon: 0.0}"]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(cmd, env={**head.env, "RAY_ADDRESS": head.address}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while not proposals(sweep_dir):
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.time() < deadline, "no cell proposed in time"
            time.sleep(0.2)
    finally:
        os.kill(driver.pid, signal.SIGKILL)  # the driver dies mid-sweep
        driver.wait()
    first = proposals(sweep_dir)
    assert len(first) == 1, first  # the next one needs another trial to end first
    stops = {p.parent.name: p.read_text() for p in sweep_dir.glob("trials/*/stopped.json")}
    finished = finished_main_runs(storage, "interrupted")
    assert 2 <= finished < 10
    proc = subprocess.run([PY, "-m", "orchestrator", "pareto", "--config", "smoke", "--set", f"storage={storage}",
                           "--experiment", "interrupted"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((storage / "interrupted" / "report" / "pareto.json").read_text())
    assert len(report["rows"]) == finished_main_runs(storage, "interrupted") >= finished
    assert report["front"] and set(report["front"]) <= {f"{r['schedule']}@{r['lam']:g}" for r in report["rows"]}
    assert (storage / "interrupted" / "report" / "pareto.png").stat().st_size > 10_000

    # --resume finishes it: finished trials are not rerun, one child run per trial.
    client = store(storage)
    exp = client.get_experiment_by_name("interrupted")
    done_before = {r.data.tags["rightsweep.trial_id"]: r.info.end_time for r in
                   client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED' and tags.`rightsweep.role` = 'trial'")}
    proc = head.run(cmd + ["--resume"], timeout=900, env={"RAY_ADDRESS": head.address})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    children = client.search_runs([exp.experiment_id], filter_string="tags.`rightsweep.role` = 'trial'")
    ids = [r.data.tags["rightsweep.trial_id"] for r in children]
    assert len(ids) == len(set(ids)) == 12
    after = proposals(sweep_dir)
    assert after[0] == first[0] and len(after) == 2
    assert len({(p["schedule"], p["lam"]) for p in after} | {(s, lam) for s in ("sequential", "mix", "alright", "maxright")
                                                           for lam in (0.25, 0.75)}) == 10, after
    # The stops made before the kill stand, and their trials were not run again. (A trial killed
    # after its step-20 checkpoint but before the driver judged that step resumes past it, and
    # runs to its end: a stop missed, never a wrong one.) Which trials are stopped depends on
    # the order trials report in (a proposed ALRIGHT cell was, once, by Mix λ 0.75); none is an
    # anchor or Sequential (protected), and each was beaten by a trial of the sweep.
    stopped_now = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("trials/*/stopped.json")}
    assert stopped_now.items() >= {k: json.loads(v) for k, v in stops.items()}.items()
    assert stopped_now and all(s["step"] == 20 and s["by"] in ids for s in stopped_now.values()), stopped_now
    assert not [k for k in stopped_now if k.startswith(("anchor", "sequential"))], stopped_now
    assert all(r.info.status == "FINISHED" for r in children), ([(i, r.info.status) for i, r in zip(ids, children)],
                                                                proc.stdout[-3000:] + proc.stderr[-3000:])
    assert {i: r.info.end_time for i, r in zip(ids, children) if i in done_before} == done_before
    for r in children:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "eval/sft_loss")]
        full = [0, 20] if r.info.run_name in stopped_now else [0, 20, 40]
        assert sorted(steps) == full, (r.info.run_name, steps)  # nothing logged twice (a backfilled gap comes later)
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`rightsweep.role` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
