"""§2, whole-sweep figures, from real ``rightsweep sweep`` runs on a private local Ray:
reference passes per sweep, fixed per-trial overhead (local mode and one worker per
trial), and the share of a default sweep's wall time spent in training and evaluation.

Each trial's wall time is its MLflow child run's start to end (the driver opens it when
Tune starts the trial and closes it when Tune reports it complete); the time inside is
the loop's own ``time/train_s + time/eval_s``.

    python -m bench.sweeps
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import QUIET_ENV, WORK, quiet_offline, read_result, run_isolated, write_result
from workers import metrics

SWEEPS = {
    # name: (preset, overrides, what it measures, the target for its per-trial overhead in s)
    "default-local": ("default", [], "the default sweep (= make demo): local-mode trials", 1.0),
    "smoke-workers": ("smoke", ["resources.num_workers=1"], "the smoke sweep with one Ray Train worker per trial", 10.0),
    # The same, one trial at a time: how much of the above is two trials sharing two cores.
    "smoke-workers-serial": ("smoke", ["resources.num_workers=1", "sweep.max_concurrent_trials=1"],
                             "the smoke sweep with one Ray Train worker per trial, one trial at a time", 10.0),
}


def run_sweep(name: str, preset: str, overrides: list[str]) -> dict:
    storage = WORK / "sweeps" / name
    shutil.rmtree(storage, ignore_errors=True)
    cmd = [sys.executable, "-m", "orchestrator", "sweep", "--config", preset, "--set", f"storage={storage}", "--set", f"name={name}"]
    for o in overrides:
        cmd += ["--set", o]
    log = WORK / "sweeps" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"  {' '.join(cmd[1:])}  (log: {log})", flush=True)
    started = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **QUIET_ENV})
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"sweep {name} exited {code}; see {log}")
    return {"wall_s": wall, "storage": storage, **measure(storage, name)}


def measure(storage: Path, name: str) -> dict:
    from orchestrator.tracking import TRIAL_TAG, Tracker, tracking_uri

    tracker = Tracker(tracking_uri(None, str(storage)), name, str(storage))
    trials = []
    for run in tracker.child_runs():
        last = tracker.trajectory(run.info.run_id, (metrics.TRAIN_S, metrics.EVAL_S, metrics.SETUP_S))[-1]
        inside = last[metrics.TRAIN_S] + last[metrics.EVAL_S]
        wall = (run.info.end_time - run.info.start_time) / 1000
        trials.append({"trial": run.info.run_name, "id": run.data.tags[TRIAL_TAG], "start": run.info.start_time / 1000,
                       "wall_s": wall, "inside_s": inside, "overhead_s": wall - inside, "setup_s": last[metrics.SETUP_S]})
    passes = storage / "cache" / "reference" / "passes.jsonl"
    return {"trials": sorted(trials, key=lambda t: t["start"]), "slots": max_overlap(trials),
            "reference_passes": len(passes.read_text().splitlines()) if passes.exists() else 0}


def max_overlap(trials: list[dict]) -> int:
    """The most trials that ran at once: the sweep's trial slots."""
    events = sorted([(t["start"], 1) for t in trials] + [(t["start"] + t["wall_s"], -1) for t in trials])
    now = best = 0
    for _, d in events:
        now += d
        best = max(best, now)
    return best


def main() -> None:
    quiet_offline()
    names = sys.argv[1:] or list(SWEEPS)  # a subset reruns only those and keeps the others' results
    out = {k: v for k, v in ((read_result("sweeps") or {}).get("sweeps") or {}).items() if k in SWEEPS and k not in names}
    for name in names:
        preset, overrides, what, _ = SWEEPS[name]
        print(f"{name}: {what}", flush=True)
        r = run_sweep(name, preset, overrides)
        inside = sum(t["inside_s"] for t in r["trials"])
        overheads = [t["overhead_s"] for t in r["trials"]]
        r.update(what=what, preset=preset, overrides=overrides, n_trials=len(r["trials"]),
                 share_in_training=inside / (r["wall_s"] * r["slots"]),
                 overhead_mean_s=sum(overheads) / len(overheads), overhead_max_s=max(overheads),
                 setup_mean_s=sum(t["setup_s"] for t in r["trials"]) / len(r["trials"]))
        r["storage"] = str(Path(r["storage"]).relative_to(WORK.parent.parent))
        print(f"  {r['n_trials']} trials in {r['wall_s']:.0f}s on {r['slots']} slots; reference passes {r['reference_passes']}; "
              f"per-trial overhead mean {r['overhead_mean_s']:.1f}s (max {r['overhead_max_s']:.1f}s); "
              f"share in training+eval {100 * r['share_in_training']:.0f}%", flush=True)
        out[name] = r
    print("a trivial one-worker TorchTrainer.fit(), Ray Train's poll at 2.0 s and at 0.2 s ...", flush=True)
    from bench.sweeps import trivial_fits as fits  # by its module name: Ray's workers cannot import a __main__

    trivial = {str(poll): run_isolated(fits, poll) for poll in (2.0, 0.2)}
    for poll, r in trivial.items():
        print(f"  poll {poll} s: {', '.join(f'{w:.1f}' for w in r['wall_s'])} s", flush=True)
    write_result("sweeps", {"sweeps": out, "trivial_fit": trivial}, " ".join(["python -m bench.sweeps", *sys.argv[1:]]))


def _trivial_loop(config: dict) -> None:
    import ray.train

    Path(config["marker"]).write_text(str(time.time()))  # when the loop started
    for i in range(3):
        ray.train.report({"i": i})


def trivial_fits(poll: float, reps: int = 2) -> dict:
    """Ray's own part of a trial with workers: a private Ray whose processes poll every
    ``poll`` seconds, and ``reps`` fits of a loop that only reports three times."""
    import tempfile

    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(poll)
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="rs-b-"), configure_logging=False,
             log_to_driver=False)
    walls, to_loop = [], []
    for rep in range(reps):
        scratch = tempfile.mkdtemp(dir=WORK)
        marker = Path(scratch) / "loop_start"
        started = time.time()
        TorchTrainer(_trivial_loop, train_loop_config={"marker": str(marker)}, scaling_config=ScalingConfig(num_workers=1),
                     run_config=RunConfig(name=f"trivial-{rep}", storage_path=scratch)).fit()
        walls.append(time.time() - started)
        to_loop.append(float(marker.read_text()) - started)
    ray.shutdown()
    return {"wall_s": walls, "until_loop_s": to_loop}


if __name__ == "__main__":
    main()
