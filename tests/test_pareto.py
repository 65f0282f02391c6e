import math

import pytest

from orchestrator.pareto import Anchors, TrialResult, front_mask, gaps, hypervolume, summarize


def test_dominated_points_are_excluded():
    pts = [(1, 3), (2, 2), (3, 1), (2.5, 2.5), (3, 3)]
    assert front_mask(pts).tolist() == [True, True, True, False, False]


def test_ties_are_all_on_the_front_and_weak_domination_excludes():
    # Two identical points: neither dominates the other. (1, 4) is weakly dominated by (1, 3).
    pts = [(1, 3), (1, 3), (1, 4), (2, 1)]
    assert front_mask(pts).tolist() == [True, True, False, True]


def test_one_point_and_no_point():
    assert front_mask([(0.4, 0.7)]).tolist() == [True]
    assert front_mask([]).tolist() == []


def test_hypervolume_of_a_staircase():
    """Steps (1,3), (2,2), (3,1) against (4,4): 3·1 + 2·1 + 1·1 = 6."""
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (4, 4)) == pytest.approx(6.0)
    # A dominated point adds nothing; a point beyond the reference adds nothing.
    assert hypervolume([(1, 3), (2, 2), (3, 1), (3, 3), (5, 0.5)], (4, 4)) == pytest.approx(6.0)
    assert hypervolume([(1, 1)], (4, 4)) == pytest.approx(9.0)
    assert hypervolume([(5, 5)], (4, 4)) == 0.0


def test_gaps_and_ideal_distance():
    assert gaps(1.5, 0.9, Anchors(0.5, 0.1)) == pytest.approx((1.0, 0.8, math.hypot(1.0, 0.8)))


def test_summarize_rows_fronts_and_runtime_vs_sequential():
    results = [
        TrialResult("a", "sequential", 0.5, 0, sft_loss=1.0, dpo_loss=3.0, runtime_s=10.0),
        TrialResult("b", "alright", 0.5, 0, sft_loss=1.5, dpo_loss=1.0, runtime_s=10.5),
        TrialResult("c", "mix", 0.5, 0, sft_loss=1.2, dpo_loss=1.2, runtime_s=15.0),
        TrialResult("d", "alright", 0.25, 0, sft_loss=1.6, dpo_loss=1.1, runtime_s=9.0),
    ]
    s = summarize(results, Anchors(0.5, 0.5), reference_point=(4.0, 4.0))
    rows = {r.trial_id: r for r in s.rows}
    assert [r.trial_id for r in s.front()] == ["a", "c", "b"]  # sorted by f_SFT
    assert not rows["d"].on_front and not rows["d"].on_schedule_front  # (1.5, 1.0) dominates it
    assert rows["b"].runtime_vs_sequential_pct == pytest.approx(5.0)
    assert rows["c"].runtime_vs_sequential_pct == pytest.approx(50.0)
    assert math.isnan(rows["d"].runtime_vs_sequential_pct)  # no Sequential trial at λ = 0.25
    assert rows["c"].ideal_distance == pytest.approx(math.hypot(0.7, 0.7))
    # alright front: only b; area (4−1.5)·(4−1) = 7.5
    assert s.hypervolume["alright"] == pytest.approx(7.5)
    # all: a(1,3) c(1.2,1.2) b(1.5,1.0): 3·1 + 2.8·1.8 + 2.5·0.2 = 3 + 5.04 + 0.5
    assert s.hypervolume["all"] == pytest.approx(8.54)
