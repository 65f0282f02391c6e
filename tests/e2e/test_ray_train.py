"""The loop under real Ray Train: two DDP workers (gloo), checkpoints, resume, the CLI."""

import json
import os
import re
import subprocess
import sys

import pytest

from orchestrator.config import Resources
from orchestrator.trial import build_trainer
from tests.support.trials import smoke_trial
from workers.loop import decisions_digest


def test_two_workers_agree_and_resume_exactly(ray_local, cache_dir, tmp_path):
    two = Resources(num_workers=2)
    common = dict(schedule="maxright", lam=0.5, total_steps=40, eval_every=10, checkpoint_every=20,
                  f_star_sft=0.2, f_star_dpo=0.1, maxright_eval_every=3)

    whole = smoke_trial(cache_dir, tmp_path / "whole", **common)
    result = build_trainer(whole, two, "whole", str(tmp_path)).fit()
    assert result.error is None
    summary = json.loads((tmp_path / "whole" / "trajectory.json").read_text())
    decisions = summary["decisions"]
    assert len(decisions) == 40 and set(decisions) == {"S", "D"}
    assert summary["rank_digests"] == [decisions_digest(decisions)] * 2, "both ranks took the same decisions"

    # The same run stopped after its step-20 checkpoint, then rerun under the same name.
    stopped = smoke_trial(cache_dir, tmp_path / "resumed", **common, stop_after=20)
    first = build_trainer(stopped, two, "resumed", str(tmp_path)).fit()
    assert first.error is None and first.metrics["step"] == 20 and first.checkpoint is not None
    assert not (tmp_path / "resumed" / "trajectory.json").exists()
    rest = smoke_trial(cache_dir, tmp_path / "resumed", **common)
    second = build_trainer(rest, two, "resumed", str(tmp_path)).fit()
    assert second.error is None and second.metrics["step"] == 40
    resumed = json.loads((tmp_path / "resumed" / "trajectory.json").read_text())
    assert resumed["decisions"] == decisions
    for key in ("eval/sft_loss", "eval/dpo_loss"):
        assert resumed["points"][-1][key] == pytest.approx(summary["points"][-1][key], abs=1e-5)


def test_cli_train_runs_one_trial(cache_dir, tmp_path):
    cmd = [sys.executable, "-m", "orchestrator", "train", "--config", "smoke", "--schedule", "alright", "--lam", "0.5",
           "--set", f"trial.cache_dir={cache_dir}", "--set", f"storage={tmp_path}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    final = next(line for line in lines if line.startswith("final eval/sft_loss="))
    path = next(line for line in lines if line.startswith("trajectory: ")).split(": ", 1)[1]
    points = json.loads(open(path).read())["points"]
    assert f"eval/sft_loss={points[-1]['eval/sft_loss']:.4f}" in final and points[-1]["step"] == 40


def test_an_adaptive_early_stopped_sweep_with_a_worker_per_trial_releases_the_stopped_trials_worker(tmp_path):
    """Trials that each drive a one-worker TorchTrainer (the trial process reserves no CPU),
    sharing one reference pass, under the adaptive search and the early stopping. Each worker
    asks for 2 CPUs, all this machine has: the cell the search proposes after the stop runs
    only if the stopped trial's worker is gone (Tune's own STOP left it holding its CPUs, and
    the sweep hung)."""
    cmd = [sys.executable, "-m", "orchestrator", "sweep", "--config", "smoke", "--set", f"storage={tmp_path}",
           "--set", "resources.num_workers=1", "--set", f"resources.cpus_per_worker={min(os.cpu_count(), 2)}",
           "--set", "sweep.schedules=[mix, alright]", "--set", "sweep.lams=[0.25, 0.75]",
           "--set", "sweep.search=adaptive", "--set", "sweep.budget=5",
           "--set", "sweep.early_stop={grace: 20, patience: 1, epsilon: 0.0, protect: []}",
           "--set", "trial.train.f_star_sft=0.1", "--set", "trial.train.f_star_dpo=0.1",
           # 80 steps past the judged evaluation: the stopped trial sees its stop file long
           # before its end (at 40 steps it once ran out first, racing the driver's judgement).
           "--set", "trial.train.total_steps=100"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-6000:]
    lines = proc.stdout.splitlines()
    # The console: a line per trial's end with its point and the sweep's progress, and every
    # line of Ray's processes (each trial's workers) before the summary.
    assert re.search(r"rightsweep.trials: alright-lam0.25-seed0 stopped early at step \d+: f_SFT [\d.]+  f_DPO [\d.]+ in \d+s", proc.stdout)
    assert re.search(r"rightsweep.trials: .* 5 of at most \d+ trials ended, 0 running", proc.stdout)
    summary = lines.index("trials (every seed):")
    assert max(i for i, line in enumerate(lines) if "pid=" in line) < summary
    sweep = tmp_path / "smoke"
    # One trial at a time, Mix first: at step 40 (not yet at 20) Mix λ 0.25 is below ALRIGHT
    # λ 0.25 in both losses, so ALRIGHT λ 0.25 is stopped with 60 of its steps still to go.
    stop = json.loads((sweep / "trials" / "alright-lam0.25-seed0" / "stopped.json").read_text())
    assert stop == {"step": 40, "by": "mix-lam0.25-seed0"}
    proposals = json.loads((sweep / "search.json").read_text())["proposals"]
    assert len(proposals) == 1 and proposals[0]["schedule"] == "mix" and 0.25 < proposals[0]["lam"] < 0.75
    proposed = f"mix-lam{proposals[0]['lam']:g}-seed0"
    assert (sweep / "trials" / proposed / "trajectory.json").exists()
    assert "early stop: 1 trial(s) stopped, on no front; alright-lam0.25-seed0 at step 40" in proc.stdout
    report = json.loads((sweep / "report" / "pareto.json").read_text())
    assert ("alright", 0.25) not in {(r["schedule"], r["lam"]) for r in report["rows"]}
    passes = (tmp_path / "cache" / "reference" / "passes.jsonl").read_text().splitlines()
    assert len(passes) == 1, "the trials reused the pass the driver made"
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("smoke")
    children = {r.info.run_name: r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("rightsweep.role") == "trial"}
    assert len(children) == 5 and all(r.info.status == "FINISHED" for r in children.values())
    for name, r in children.items():
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "eval/sft_loss")]
        full = list(range(0, 101, 20))
        assert (steps[:3] == [0, 20, 40] and len(steps) < len(full)) if name == "alright-lam0.25-seed0" else steps == full, name
        assert r.data.metrics["time/setup_s"] > 0
    stopped = children["alright-lam0.25-seed0"]
    assert stopped.data.tags["rightsweep.stopped_at_step"] == "40"
    # It ended itself, after its step-40 evaluation and before its last step: its cost row.
    assert 40 <= stopped.data.metrics["updates/sft"] + stopped.data.metrics["updates/dpo"] < 100
