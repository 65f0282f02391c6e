"""The early-stopping rule, by hand."""

from orchestrator.earlystop import Dominance, Rule, Stop, beats


def test_beaten_means_lower_by_one_plus_epsilon_in_both_losses():
    assert beats((1.0, 1.0), (1.1, 1.1), 0.05)
    assert not beats((1.0, 1.0), (1.04, 2.0), 0.05)  # 1.05 > 1.04 in SFT
    assert not beats((1.0, 1.0), (1.0, 1.0), 0.0)  # a tie beats nobody


def rule(**kw):
    return Rule(**{"grace": 10, "epsilon": 0.0, "patience": 2, **kw})


def test_a_trial_beaten_patience_times_in_a_row_is_stopped_with_its_cell():
    d = Dominance(rule())
    assert d.observe("a", "mix", 0.5, 0, False, 10, (1.0, 1.0)) is None
    assert d.observe("b", "alright", 0.5, 0, False, 10, (2.0, 2.0)) is None  # one strike
    assert d.observe("a", "mix", 0.5, 0, False, 20, (1.0, 1.0)) is None
    assert d.observe("b", "alright", 0.5, 0, False, 20, (2.0, 2.0)) == Stop("b", ("alright", 0.5), 20, "a")
    # Another seed of the stopped cell stops at its first report, before the grace too.
    assert d.observe("b1", "alright", 0.5, 1, False, 0, (9.0, 9.0)) == Stop("b1", ("alright", 0.5), 0, "its cell")


def test_a_step_not_beaten_resets_the_count():
    d = Dominance(rule())
    for step in (10, 20, 30):
        d.observe("a", "mix", 0.5, 0, False, step, (1.0, 1.0))
    assert d.observe("b", "alright", 0.5, 0, False, 10, (2.0, 2.0)) is None
    assert d.observe("b", "alright", 0.5, 0, False, 20, (0.5, 0.5)) is None  # b leads here
    assert d.observe("b", "alright", 0.5, 0, False, 30, (2.0, 2.0)) is None  # one strike again
    assert d.strikes["b"] == 1


def test_only_the_same_seed_after_the_grace_and_never_protected_trials():
    d = Dominance(rule(patience=1))
    d.observe("a", "mix", 0.5, 0, False, 0, (1.0, 1.0))
    assert d.observe("b", "alright", 0.5, 0, False, 0, (2.0, 2.0)) is None  # before the grace
    d.observe("a", "mix", 0.5, 0, False, 10, (1.0, 1.0))
    assert d.observe("c", "alright", 0.75, 1, False, 10, (2.0, 2.0)) is None  # seed 1: a is not its pair
    assert d.observe("s", "sequential", 0.5, 0, False, 10, (2.0, 2.0)) is None  # protected schedule
    assert d.observe("anchor", "sequential", 0.0, 0, True, 10, (2.0, 2.0)) is None
    assert d.observe("m", "maxright", 0.5, 0, False, 10, (2.0, 2.0)) == Stop("m", ("maxright", 0.5), 10, "a")
    d2 = Dominance(rule(patience=1, protect=()))
    d2.observe("a", "mix", 0.5, 0, False, 10, (1.0, 1.0))
    assert d2.observe("s", "sequential", 0.5, 0, False, 10, (2.0, 2.0)) is not None


def test_recorded_evaluations_are_compared_against_but_judge_nothing():
    d = Dominance(rule(patience=1))
    d.record("a", 0, 10, (1.0, 1.0))
    d.record("b", 0, 10, (2.0, 2.0))  # an earlier run's: no strike, no stop
    assert not d.stopped_cells and not d.strikes
    assert d.observe("c", "mix", 0.25, 0, False, 10, (3.0, 3.0)).by == "a"


def test_a_stop_is_one_file_per_trial_and_the_first_stands(tmp_path):
    from orchestrator import resume

    assert resume.stopped(tmp_path) == {}
    judged = {"step": 20, "eval/sft_loss": 4.16, "eval/dpo_loss": 0.95}
    resume.record_stop(tmp_path, "maxright-lam0.5-seed0", 20, "mix-lam0.25-seed0", judged)
    resume.record_stop(tmp_path, "maxright-lam0.5-seed0", 40, "its cell", {**judged, "step": 40})  # a later report, judged again
    resume.record_stop(tmp_path, "alright-lam0.5-seed1", 30, "its cell", {**judged, "step": 30})
    # The driver died before Tune wrote the judged evaluation down: it is still the trial's, from its stop.
    assert resume.reported_points(tmp_path, "maxright-lam0.5-seed0") == [judged]
    assert resume.stop_file(tmp_path, "alright-lam0.5-seed1") == tmp_path / "trials" / "alright-lam0.5-seed1" / "stopped.json"
    assert resume.stopped(tmp_path) == {"alright-lam0.5-seed1": {"step": 30, "by": "its cell"},
                                        "maxright-lam0.5-seed0": {"step": 20, "by": "mix-lam0.25-seed0"}}


def test_a_stopped_trial_stays_off_the_front_even_when_it_ran_to_its_end():
    """The stop file was written after the trial's last steps had raced past it: the trial has
    a finished trajectory and a stop; it is sorted as stopped, so the front does not depend
    on who won the race."""
    from orchestrator.space import Point
    from orchestrator.sweep import sort_trials

    points = [Point("main", s, 0.25, 0) for s in ("mix", "alright", "maxright", "sequential")]
    done = {"mix-lam0.25-seed0": [{"step": 40}], "alright-lam0.25-seed0": [{"step": 40}]}
    grid = sort_trials(points, {"alright-lam0.25-seed0": {"step": 20, "by": "mix-lam0.25-seed0"}}, done.get,
                       {"maxright-lam0.25-seed0": RuntimeError("boom")})
    assert list(grid.finished) == ["mix-lam0.25-seed0"] and list(grid.stopped) == ["alright-lam0.25-seed0"]
    assert grid.failed == ["maxright-lam0.25-seed0"] and grid.unfinished == ["sequential-lam0.25-seed0"]
