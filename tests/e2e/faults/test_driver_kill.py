"""Fault: the sweep driver dies mid-sweep (kill -9). The front is rebuilt from the trials
that finished; ``rightsweep sweep --resume`` finishes the sweep without rerunning them, and
MLflow ends with exactly one child run per trial, none left running."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.support.mlflowserver import store

PY = sys.executable


def finished_main_runs(storage, experiment) -> int:
    try:
        client = store(storage)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return 0
        found = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'main' and attributes.status = 'FINISHED'")
        return len(found)
    except Exception:  # the store may not exist yet
        return 0


def test_interrupted_sweep_builds_front_from_finished_trials(head, tmp_path):
    storage = tmp_path / "storage"
    cmd = [PY, "-m", "orchestrator", "sweep", "--config", "smoke", "--set", f"storage={storage}",
           "--set", "name=interrupted", "--set", "sweep.lams=[0.25, 0.5, 0.75]"]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(cmd, env={**head.env, "RAY_ADDRESS": head.address}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while finished_main_runs(storage, "interrupted") < 2:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.time() < deadline, "no main trial finished in time"
            time.sleep(1)
    finally:
        os.kill(driver.pid, signal.SIGKILL)  # the driver dies mid-sweep
        driver.wait()
    finished = finished_main_runs(storage, "interrupted")
    assert 2 <= finished < 12
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
    assert len(ids) == len(set(ids)) == 14
    assert all(r.info.status == "FINISHED" for r in children), ([(i, r.info.status) for i, r in zip(ids, children)],
                                                                proc.stdout[-3000:] + proc.stderr[-3000:])
    assert {i: r.info.end_time for i, r in zip(ids, children) if i in done_before} == done_before
    for r in children:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "eval/sft_loss")]
        assert sorted(steps) == [0, 20, 40], (r.info.run_name, steps)  # nothing logged twice (a backfilled gap comes later)
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`rightsweep.role` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
