"""The front rebuilt from a real MLflow store alone (SQLite), with hand-made trials."""

import math

import pytest

from orchestrator.pareto import Anchors
from orchestrator.store import rebuild
from orchestrator.tracking import Tracker


def traj(*points):
    """(step, f_SFT, f_DPO) -> trajectory points with the costs a trial reports."""
    return [{"step": s, "eval/sft_loss": a, "eval/dpo_loss": b, "eval/pref_accuracy": 0.5, "time/train_s": 2.0 * s,
             "time/eval_s": 1.0, "system/peak_mem_mb": 100.0} for s, a, b in points]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (a new one costs seconds of migrations); an experiment per test."""
    root = tmp_path_factory.mktemp("store")
    return lambda experiment: Tracker(f"sqlite:///{root / 'mlflow.db'}", experiment, str(root))


def sweep(tracker, parent_params, trials):
    parent = tracker.start_parent("exp", {"trial.train.f_star_sft": "None", "trial.train.f_star_dpo": "None",
                                          "sweep.hypervolume_reference": "None", "numerics.threads": "1", **parent_params})
    for label, (schedule, lam, seed, stage, points, status) in trials.items():
        run = tracker.trial_run(parent, label, label, {"schedule": schedule, "lam": lam, "seed": seed}, stage)
        tracker.log_points(run, points)
        if status != "RUNNING":
            tracker.finish(run, status=status)
    return tracker, parent


TRIALS = {
    "anchor-sft-seed0": ("sequential", 0.0, 0, "anchor", traj((0, 3.0, 0.69), (10, 1.0, 2.0), (20, 1.2, 3.0)), "FINISHED"),
    "anchor-dpo-seed0": ("sequential", 1.0, 0, "anchor", traj((0, 3.0, 0.69), (10, 4.0, 0.1)), "FINISHED"),
    "mix-lam0.5-seed0": ("mix", 0.5, 0, "main", traj((0, 3.0, 0.69), (10, 2.0, 0.4)), "FINISHED"),
    "alright-lam0.5-seed0": ("alright", 0.5, 0, "main", traj((0, 3.0, 0.69), (10, 1.5, 0.6)), "FINISHED"),
    "sequential-lam0.5-seed0": ("sequential", 0.5, 0, "main", traj((0, 3.0, 0.69), (10, 3.0, 0.5)), "FINISHED"),
    "maxright-lam0.5-seed0": ("maxright", 0.5, 0, "main", traj((0, 3.0, 0.69), (10, 0.1, 0.01)), "RUNNING"),
    "mix-lam0.75-seed0": ("mix", 0.75, 0, "main", traj((0, 3.0, 0.69), (10, 0.2, 0.02)), "FAILED"),
}


def test_the_front_of_the_finished_trials_and_f_star_from_their_anchors(store, tmp_path):
    tracker, parent = sweep(store("finished"), {}, TRIALS)
    summary = rebuild(tracker, tmp_path / "report", finished=True)
    # Anchors: SFT's best over its trajectory (1.0 at step 10, not its last 1.2), DPO's 0.1.
    assert summary.anchors == Anchors(1.0, 0.1)
    assert [(r.schedule, r.sft_loss, r.dpo_loss) for r in summary.rows] == [
        ("alright", 1.5, 0.6), ("mix", 2.0, 0.4), ("sequential", 3.0, 0.5)], "running and failed trials are left out"
    mix = next(r for r in summary.rows if r.schedule == "mix")
    assert (mix.gap_sft, mix.gap_dpo) == pytest.approx((1.0, 0.3)) and mix.ideal_distance == pytest.approx(math.hypot(1.0, 0.3))
    assert mix.runtime_s == 21.0 and mix.trial_id == "mix-lam0.5-seed0"
    assert [(c.schedule, c.lam) for c in summary.front()] == [("alright", 0.5), ("mix", 0.5)]
    assert summary.initial_point == (3.0, 0.69) and summary.numerics == {"threads": "1"}
    # Published on the sweep's run, which ends as told.
    run = tracker.client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["f_star/sft"] == 1.0 and run.data.metrics["f_star/dpo"] == 0.1
    assert run.data.metrics["hypervolume_reference/sft"] == pytest.approx(1.1 * 3.0)  # the nadir of the main trials and the start
    assert run.data.tags["hypervolume_reference"].startswith("1.1 × the nadir")
    assert {"pareto.csv", "pareto.json", "pareto.png"} <= {p.name for p in (tmp_path / "report").iterdir()}


def test_f_star_and_the_reference_point_given_by_the_config_win(store, tmp_path):
    tracker, parent = sweep(store("given"), {"trial.train.f_star_sft": "0.5", "trial.train.f_star_dpo": "0.05",
                                       "sweep.hypervolume_reference": "(5.0, 1.0)"}, TRIALS)
    summary = rebuild(tracker, tmp_path / "report", finished=False)
    assert summary.anchors == Anchors(0.5, 0.05)
    assert summary.reference_point == (5.0, 1.0) and summary.reference_rule == "sweep.hypervolume_reference"
    assert tracker.client.get_run(parent).info.status == "FAILED"


def test_a_sweep_with_no_finished_main_trial_has_no_front(store, tmp_path):
    tracker, _ = sweep(store("anchors-only"), {}, {k: v for k, v in TRIALS.items() if v[3] == "anchor"})
    with pytest.raises(LookupError, match="has no finished trial yet"):
        rebuild(tracker, tmp_path / "report")
    empty = store("nothing")
    with pytest.raises(LookupError, match="no sweep run"):
        rebuild(empty, tmp_path / "report")


def test_behaviour_and_samples_come_back_from_the_store(store, tmp_path):
    """Generation rates are metrics, samples a table artifact per evaluation, logged once
    however often the points are mirrored; the rebuilt report shows the front's answers."""
    def with_behaviour(points, acc, win, answer):
        out = [dict(p, **{"gen/sft_accuracy": acc, "gen/pref_win_rate": win} if p["step"] else
                    {"gen/sft_accuracy": 0.0, "gen/pref_win_rate": 1.0}) for p in points]  # one base model
        out[-1]["samples"] = [{"kind": "sft", "prompt": "User: what comes after 41\nAssistant:", "reference": "42",
                               "generation": answer, "passed": answer == "42"},
                              {"kind": "pref", "prompt": "User: reverse cat\nAssistant:", "reference": "sure! tac.",
                               "generation": "tac", "passed": False}]
        return out

    trials = {
        "anchor-sft-seed0": ("sequential", 0.0, 0, "anchor", with_behaviour(traj((0, 3.0, 0.69), (10, 1.0, 2.0)), 0.9, 0.0, "42"),
                             "FINISHED"),
        "mix-lam0.5-seed0": ("mix", 0.5, 0, "main", with_behaviour(traj((0, 3.0, 0.69), (10, 2.0, 0.4)), 0.5, 0.5, "42"), "FINISHED"),
        "alright-lam0.5-seed0": ("alright", 0.5, 0, "main", with_behaviour(traj((0, 3.0, 0.69), (10, 1.5, 0.6)), 0.1, 0.2, "45"),
                                 "FINISHED"),
    }
    tracker, parent = sweep(store("behaviour"), {}, trials)
    mix_run = tracker.trial_run(parent, "mix-lam0.5-seed0", "mix-lam0.5-seed0", {}, "main")
    fresh = store("behaviour")  # another driver (a resumed sweep, `sync`): nothing of the first's memory
    fresh.log_samples(mix_run, 10, trials["mix-lam0.5-seed0"][4][-1]["samples"])
    assert fresh.samples(mix_run, 10) == trials["mix-lam0.5-seed0"][4][-1]["samples"], "logged once: no appended twin"
    assert fresh.samples(mix_run, 0) is None
    summary = rebuild(fresh, tmp_path / "report", finished=True)
    cells = {c.schedule: c for c in summary.cells}
    assert (cells["mix"].sft_accuracy.mean, cells["mix"].pref_win_rate.mean) == (0.5, 0.5)
    assert [c.schedule for c in summary.behaviour_front()] == ["mix"]
    assert summary.initial_behaviour == (0.0, 1.0)
    assert summary.anchor_behaviour == {"sft": (0.9, 0.0)}
    assert fresh.client.get_run(parent).data.metrics["behaviour_hypervolume/all"] == pytest.approx(0.25)
    md = (tmp_path / "report" / "samples.md").read_text()
    assert "| alright@0.5 | loss | `45` | fail |" in md and "| mix@0.5 | loss, behaviour | `42` | pass |" in md


def test_a_copied_store_is_rebuilt_without_writing_into_the_originals_folder(tmp_path, caplog):
    """A copied SQLite store's runs still name the original's artifact folder: the rebuild
    writes its report where asked and leaves both MLflow and that folder alone."""
    import shutil

    original = tmp_path / "original"
    tracker, parent = sweep(Tracker(f"sqlite:///{original / 'mlflow.db'}", "exp", str(original)), {}, TRIALS)
    before = sorted(p for p in original.rglob("*") if p.is_file())
    shutil.copytree(original, copy := tmp_path / "copy")
    copied = Tracker(f"sqlite:///{copy / 'mlflow.db'}", "exp", str(copy))
    summary = rebuild(copied, tmp_path / "report", finished=True)
    assert [(c.schedule, c.lam) for c in summary.front()] == [("alright", 0.5), ("mix", 0.5)]
    assert (tmp_path / "report" / "pareto.csv").is_file()
    assert sorted(p for p in original.rglob("*") if p.is_file() and p.name != "mlflow.db") == [
        p for p in before if p.name != "mlflow.db"]
    assert not list((original / "mlartifacts").rglob("pareto.png"))
    assert copied.client.get_run(parent).info.status == "RUNNING", "nothing published in the copy either"
    assert any("copied from" in r.getMessage() and str(original) in r.getMessage() for r in caplog.records)
    assert copied.artifacts_elsewhere(copied.client.get_run(parent)) == original / "mlartifacts" / "exp" / parent / "artifacts"
