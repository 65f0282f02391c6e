"""A Ray Train worker killed with SIGKILL after a checkpoint: Ray Train restarts it
(``FailureConfig``), it resumes from that checkpoint, and the trial ends exactly where an
uninterrupted run with the same seed ends."""

import json
from collections import Counter
import os
import signal
import threading
import time

import psutil
import pytest

from orchestrator.config import Resources
from tests.support.trials import smoke_trial

COMMON = dict(schedule="alright", lam=0.5, total_steps=200, eval_every=20, checkpoint_every=20)


def train_workers() -> list[psutil.Process]:
    """Live Ray Train worker processes of this test session's Ray (its raylet is our child)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "RayTrainWorker" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def checkpoints(run_dir) -> list:
    return sorted(d for d in run_dir.glob("checkpoint_*") if d.is_dir()) if run_dir.exists() else []


def registered(run_dir) -> list[str]:
    """The checkpoints Ray Train's controller has registered (its own snapshot on storage):
    those a restarted worker may resume from."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, json.JSONDecodeError):  # not written yet, or caught mid-write
        return []
    return [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]]


def wait(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.05)


def test_a_killed_worker_is_restarted_and_resumes_exactly(ray_local, cache_dir, tmp_path):
    from orchestrator.trial import build_trainer

    one = Resources(num_workers=1, max_failures=1)
    whole = build_trainer(smoke_trial(cache_dir, tmp_path / "whole", **COMMON), one, "whole", str(tmp_path)).fit()
    assert whole.error is None
    expected = json.loads((tmp_path / "whole" / "trajectory.json").read_text())
    # The finished run's worker may take a moment to exit; it must not be taken for the victim.
    wait(lambda: not train_workers(), 120, "the first run's worker to exit")

    run_dir = tmp_path / "runs" / "killed"
    trainer = build_trainer(smoke_trial(cache_dir, tmp_path / "killed", **COMMON), one, "killed", str(tmp_path))
    outcome = {}
    fit = threading.Thread(target=lambda: outcome.update(result=trainer.fit()), daemon=True)
    fit.start()
    try:
        # Killed once Ray Train has registered a checkpoint (a checkpoint on storage is not yet
        # one it resumes from: a loaded machine once killed the worker before it had any).
        wait(lambda: registered(run_dir) or not fit.is_alive(), 300, "a registered checkpoint")
        at_kill = registered(run_dir)
        victims = train_workers()
        assert fit.is_alive() and len(victims) == 1, f"still training: {fit.is_alive()}, workers: {victims}"
        os.kill(victims[0].pid, signal.SIGKILL)
        fit.join(timeout=600)
    finally:
        while fit.is_alive():  # a failed assertion must not leave a trial training under the next tests
            for p in train_workers():
                p.kill()
            fit.join(timeout=5)

    result = outcome["result"]
    assert result.error is None and result.metrics["step"] == COMMON["total_steps"], result.error
    assert not victims[0].is_running()
    resumed = json.loads((tmp_path / "killed" / "trajectory.json").read_text())
    assert len(resumed["decisions"]) == COMMON["total_steps"] and resumed["decisions"] == expected["decisions"]
    assert [p["step"] for p in resumed["points"]] == [p["step"] for p in expected["points"]]
    for key in ("eval/sft_loss", "eval/dpo_loss", "eval/pref_accuracy"):
        assert resumed["points"][-1][key] == pytest.approx(expected["points"][-1][key], abs=1e-5)
    assert resumed["points"][-1]["updates/sft"] + resumed["points"][-1]["updates/dpo"] == COMMON["total_steps"]
    # Resumed, not restarted from scratch: each checkpoint registered before the kill was
    # written once; only those after it (written again by the restarted worker) may be twice.
    steps = Counter(json.loads((d / "state.json").read_text())["step"] for d in checkpoints(run_dir))
    assert set(steps) == set(range(20, 201, 20))
    last_registered = max(json.loads((run_dir / name / "state.json").read_text())["step"] for name in at_kill)
    assert all(steps[s] == 1 for s in range(20, last_registered + 1, 20)), (steps, at_kill)


def test_a_damaged_checkpoint_of_a_multi_worker_trial_is_named_not_loaded(ray_local, cache_dir, tmp_path):
    """Two workers stop after their step-20 checkpoint; its state.json is then cut short. The
    rerun fails with one line naming the checkpoint and the file, instead of a traceback from
    deep in a loader (and resumes once the damaged folder is gone)."""
    from orchestrator.trial import build_trainer

    two = Resources(num_workers=2)
    common = dict(schedule="alright", lam=0.5, total_steps=40, eval_every=10, checkpoint_every=10)
    first = build_trainer(smoke_trial(cache_dir, tmp_path / "out", **common, stop_after=20), two, "damaged", str(tmp_path)).fit()
    assert first.error is None and first.metrics["step"] == 20
    latest = checkpoints(tmp_path / "runs" / "damaged")[-1]
    state = latest / "state.json"
    state.write_text(state.read_text()[: len(state.read_text()) // 2])
    with pytest.raises(Exception) as failed:
        build_trainer(smoke_trial(cache_dir, tmp_path / "out", **common), two, "damaged", str(tmp_path)).fit()
    assert f"RuntimeError: checkpoint {latest} is damaged (state.json: JSONDecodeError" in str(failed.value)
