"""Faults tried as an operator and an attacker would: a trial process killed mid-sweep, a
sweep stopped with Ctrl-C or SIGTERM, a planted pickle on storage, two drivers at once.

Each sweep here runs on the private local Ray that `rightsweep sweep` starts (local-mode
trials, two at a time)."""

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.support.mlflowserver import store
from tests.support.planted import Planted

PY = sys.executable
LONG = ["--set", "trial.train.total_steps=600", "--set", "trial.train.eval_every=100", "--set", "trial.train.checkpoint_every=100"]


def sweep(storage, cache_dir, *extra):
    return [PY, "-m", "orchestrator", "sweep", "--config", "smoke", "--set", f"storage={storage}",
            "--set", f"trial.cache_dir={cache_dir}", *extra]


def start(cmd, log_path):
    log = open(log_path, "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def wait_for(predicate, proc, log_path, timeout=600):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.time() < deadline, "timed out: " + log_path.read_text()[-3000:]
        time.sleep(0.2)


def finished_trials(storage, name="smoke") -> int:
    return len(list((storage / name / "trials").glob("*/trajectory.json")))


def runs(storage, name="smoke"):
    client = store(storage)
    exp = client.get_experiment_by_name(name)
    return client, exp, client.search_runs([exp.experiment_id])


def anchor_processes(log) -> list[str]:
    return re.findall(r"anchor-dpo-seed0 starts in process (\d+)", log.read_text())


def test_a_killed_trial_process_is_retried_then_fails_its_waiters_with_a_report(cache_dir, tmp_path):
    """kill -9 of the DPO anchor's trial process, twice, with resources.max_failures=1: Tune
    retries it once (a second process starts it), then it fails for good; the MAXRIGHT trial
    waiting for its f* fails naming it (it used to wait for ever), the others make the front,
    and no MLflow run is left RUNNING."""
    storage, log = tmp_path / "s", tmp_path / "driver.log"
    proc = start(sweep(storage, cache_dir, "--set", "sweep.schedules=[alright, maxright]", "--set", "resources.max_failures=1",
                       *LONG), log)
    for attempt in (1, 2):
        wait_for(lambda: len(anchor_processes(log)) >= attempt, proc, log)
        time.sleep(2)  # into its training
        os.kill(int(anchor_processes(log)[-1]), signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    out = log.read_text()
    assert len(anchor_processes(log)) == 2, "retried once, in a new process"
    assert "2 trial(s) failed: anchor-dpo-seed0, maxright-lam0.5-seed0" in out
    assert "trial maxright-lam0.5-seed0 failed: RuntimeError: f* cannot be estimated: anchor-dpo-seed0 failed" in out
    report = json.loads((storage / "smoke" / "report" / "pareto.json").read_text())
    assert [r["schedule"] for r in report["rows"]] == ["alright"] and report["anchors"] is None
    _, _, all_runs = runs(storage)
    status = {r.info.run_name: r.info.status for r in all_runs}
    assert status["anchor-dpo-seed0"] == "FAILED" and status["maxright-lam0.5-seed0"] == "FAILED"
    assert status["alright-lam0.5-seed0"] == "FINISHED" and "RUNNING" not in status.values()


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_sweep_stops_cleanly_and_resumes_without_unpickling(cache_dir, tmp_path, signum, code):
    """Ctrl-C (or SIGTERM) after two finished main trials: no f* or front from half-run
    trials, their runs KILLED, a line saying how to resume, exit 130 (143). Then a pickle is
    planted where Tune keeps its state; --resume runs nothing of it and finishes the sweep
    with one child run per trial."""
    storage, log = tmp_path / "s", tmp_path / "driver.log"
    cmd = sweep(storage, cache_dir, "--set", "sweep.schedules=[mix, alright]", "--set", "sweep.lams=[0.25, 0.75]")
    proc = start(cmd, log)
    wait_for(lambda: finished_trials(storage) >= 4, proc, log)  # both anchors and two main trials
    proc.send_signal(signum)
    assert proc.wait(timeout=300) == code, log.read_text()[-3000:]
    out = log.read_text()
    assert f"rightsweep: interrupted by {signal.Signals(signum).name}:" in out and "--resume" in out
    assert "anchors: f*" not in out and "front (*)" not in out
    # The driver's own lines: a trial process stopped by Ray's SIGTERM may print Ray's
    # SystemExit from inside a garbage-collector callback (seen once in CI), forwarded here.
    driver = [line for line in out.splitlines() if not re.match(r"(\x1b\[\d+m)?\(\w+ pid=", line)]
    assert not any("Traceback" in line for line in driver), "\n".join(driver)[-3000:]
    assert not (storage / "smoke" / "report").exists()
    _, _, all_runs = runs(storage)
    status = {r.info.run_name: r.info.status for r in all_runs}
    assert status["smoke"] == "KILLED" and "RUNNING" not in status.values()
    finished = {label for label in status if (storage / "smoke" / "trials" / label / "trajectory.json").exists()}
    assert all(status[label] == "FINISHED" for label in finished)
    if signum == signal.SIGTERM:
        return  # the resume below is the same after either signal

    marker = tmp_path / "pwned"
    for name in ("tuner.pkl", "trainable.pkl"):
        (storage / "smoke" / "tune" / "grid" / name).write_bytes(pickle.dumps(Planted(marker)))
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert not marker.exists(), "--resume must not unpickle anything from storage"
    assert f"{len(finished)} of 6 trials had finished" in resumed.stderr
    client, exp, all_runs = runs(storage)
    children = [r for r in all_runs if r.data.tags.get("rightsweep.role") == "trial"]
    labels = [r.data.tags["rightsweep.trial_id"] for r in children]
    assert len(labels) == len(set(labels)) == 6 and all(r.info.status == "FINISHED" for r in all_runs)
    for r in children:
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "eval/sft_loss")) == [0, 20, 40], r.info.run_name


def test_two_sweeps_of_one_name_on_one_storage_do_not_interleave(cache_dir, tmp_path):
    storage, log = tmp_path / "s", tmp_path / "first.log"
    first = start(sweep(storage, cache_dir, *LONG), log)
    wait_for(lambda: "starts in process" in log.read_text(), first, log)
    second = subprocess.run(sweep(storage, cache_dir), capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"rightsweep: config error: name: sweep 'smoke' is already running on {storage} (pid {first.pid} on" in second.stderr
    assert "started a local Ray" not in second.stderr
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=300) == 130
