"""The sweep console's ETA and durations, computed by hand."""

from orchestrator.console import duration, eta_s


def test_no_eta_before_a_trial_ended():
    assert eta_s([], [3.0], waiting=4, slots=2) is None


def test_the_eta_runs_the_waiting_trials_on_the_first_free_slot():
    # mean 15 s; the running trial has 10 s left, the idle slot is free now: the three waiting
    # trials start at 0, 10 and 15 and end at 15, 25 and 30.
    assert eta_s([10.0, 20.0], [5.0], waiting=3, slots=2) == 30.0


def test_a_trial_past_the_mean_is_counted_as_ending_now():
    assert eta_s([10.0], [30.0], waiting=0, slots=1) == 0.0
    assert eta_s([10.0], [30.0], waiting=2, slots=1) == 20.0


def test_durations_read_as_seconds_minutes_and_hours():
    assert [duration(s) for s in (4.6, 65, 3600, 3725)] == ["5s", "1m05s", "1h00m", "1h02m"]
