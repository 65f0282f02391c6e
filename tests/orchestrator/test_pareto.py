import math

import pytest

from orchestrator.pareto import (
    Anchors, Interval, TrialResult, anchor_behaviour, anchors_from_trajectories, behaviour_front_mask, behaviour_hypervolume,
    best_loss, finished_anchors, front_mask, gaps, hypervolume, initial_behaviour, initial_point, interval95, summarize,
    trial_result,
)

LN2 = math.log(2)


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
    s = summarize(results, Anchors(0.5, 0.5), initial_point=(2.0, LN2), reference=(4.0, 4.0))
    rows = {r.trial_id: r for r in s.rows}
    cells = {(c.schedule, c.lam): c for c in s.cells}
    assert [(c.schedule, c.lam) for c in s.front()] == [("sequential", 0.5), ("mix", 0.5), ("alright", 0.5)]  # by f_SFT
    assert not cells[("alright", 0.25)].on_front and not cells[("alright", 0.25)].on_schedule_front  # (1.5, 1.0) dominates it
    assert cells[("alright", 0.25)].not_separable is None, "one seed: no interval, so no claim either way"
    assert rows["b"].runtime_vs_sequential_pct == pytest.approx(5.0)
    assert rows["c"].runtime_vs_sequential_pct == pytest.approx(50.0)
    assert math.isnan(rows["d"].runtime_vs_sequential_pct)  # no Sequential trial at λ = 0.25
    assert rows["c"].ideal_distance == pytest.approx(math.hypot(0.7, 0.7))
    assert s.reference_point == (4.0, 4.0) and s.reference_rule == "sweep.hypervolume_reference"
    # Normalised by the box [0, 4] × [0, 4]. alright front: only b; area (4−1.5)·(4−1) = 7.5
    assert s.hypervolume["alright"] == pytest.approx(7.5 / 16)
    # all: a(1,3) c(1.2,1.2) b(1.5,1.0): 3·1 + 2.8·1.8 + 2.5·0.2 = 3 + 5.04 + 0.5
    assert s.hypervolume["all"] == pytest.approx(8.54 / 16)


def test_cells_are_seed_means_with_t_intervals():
    """f_SFT 1, 2, 3 over three seeds: mean 2, sample std 1, t(0.975, 2) = 4.302653 ->
    half-width 4.302653 / √3 = 2.484138. The trial table keeps every seed."""
    results = [TrialResult(f"t{i}", "alright", 0.5, i, sft_loss=v, dpo_loss=0.5, runtime_s=10.0) for i, v in enumerate([1.0, 2.0, 3.0])]
    s = summarize(results, Anchors(0.5, 0.25), initial_point=(4.0, LN2))
    (cell,) = s.cells
    assert cell.seeds == (0, 1, 2) and len(s.rows) == 3
    assert cell.sft_loss.mean == pytest.approx(2.0)
    assert cell.sft_loss.high - cell.sft_loss.mean == pytest.approx(2.484138, abs=1e-6)
    assert cell.sft_loss.mean - cell.sft_loss.low == pytest.approx(2.484138, abs=1e-6)
    assert cell.gap_sft.mean == pytest.approx(1.5) and cell.dpo_loss.high == pytest.approx(0.5)  # no spread
    assert interval95([7.0]) == Interval(7.0) and not interval95([7.0]).known


def test_a_dominated_cell_within_a_dominating_cells_interval_is_not_separable():
    """mix: f 1.0 and 1.2 on both (mean 1.1; half-width 12.7062·0.141421/√2 = 1.27062, so up
    to 2.37). alright at 1.3 on both lies inside mix's box: dominated, but not separably.
    sequential at 5.0 is dominated beyond mix's box: separably."""
    results = [
        TrialResult("m0", "mix", 0.5, 0, 1.0, 1.0), TrialResult("m1", "mix", 0.5, 1, 1.2, 1.2),
        TrialResult("a0", "alright", 0.5, 0, 1.3, 1.3), TrialResult("a1", "alright", 0.5, 1, 1.3, 1.3),
        TrialResult("s0", "sequential", 0.5, 0, 5.0, 5.0), TrialResult("s1", "sequential", 0.5, 1, 5.0, 5.0),
    ]
    cells = {c.schedule: c for c in summarize(results, Anchors(0.5, 0.5), initial_point=(6.0, LN2)).cells}
    assert cells["mix"].sft_loss.high == pytest.approx(1.1 + 1.27062, abs=1e-4)
    assert cells["mix"].on_front and cells["mix"].not_separable is False
    assert not cells["alright"].on_front and cells["alright"].not_separable is True
    assert not cells["sequential"].on_front and cells["sequential"].not_separable is False


def test_hypervolume_reference_is_beyond_every_trial_not_the_initial_point():
    """The initial model's DPO loss is exactly ln 2, so with it as the reference a Sequential
    trial ending at DPO 5.46 counted 0. The default reference is 1.1 × the nadir of the
    trials and the initial model: (1.1·3.55, 1.1·5.46) = (3.905, 6.006)."""
    results = [TrialResult("s", "sequential", 0.5, 0, sft_loss=0.1, dpo_loss=5.46),
               TrialResult("a", "alright", 0.5, 0, sft_loss=0.3, dpo_loss=0.2)]
    s = summarize(results, Anchors(0.01, 0.0), initial_point=(3.55, LN2))
    assert s.reference_point == pytest.approx((3.905, 6.006))
    assert "nadir" in s.reference_rule
    assert s.hypervolume["sequential"] == pytest.approx((3.905 - 0.1) * (6.006 - 5.46) / (3.905 * 6.006))
    assert s.hypervolume["alright"] == pytest.approx((3.905 - 0.3) * (6.006 - 0.2) / (3.905 * 6.006))
    assert 0 < s.hypervolume["sequential"] < s.hypervolume["alright"] < s.hypervolume["all"] <= 1


def test_no_anchors_gives_no_gaps():
    s = summarize([TrialResult("a", "alright", 0.5, 0, 0.3, 0.2)], None, initial_point=(3.0, LN2))
    assert math.isnan(s.rows[0].gap_sft) and math.isnan(s.cells[0].ideal_distance.mean) and s.anchors is None


def test_f_star_is_the_mean_over_anchor_seeds_of_each_seeds_best():
    seed0 = [{"eval/sft_loss": 2.0, "eval/dpo_loss": 0.7}, {"eval/sft_loss": 1.5, "eval/dpo_loss": 0.9},
             {"eval/sft_loss": 1.75, "eval/dpo_loss": 0.8}]
    seed1 = [{"eval/sft_loss": 2.5, "eval/dpo_loss": 0.6}, {"eval/sft_loss": 1.0, "eval/dpo_loss": 0.3}]
    assert (best_loss("sft", seed0), best_loss("dpo", seed0)) == (1.5, 0.7)
    # SFT: best 1.5 (seed 0) and 1.0 (seed 1) -> 1.25; DPO from the DPO-only runs: 0.7 and 0.3 -> 0.5
    assert anchors_from_trajectories([seed0, seed1], [seed0, seed1]) == Anchors(1.25, 0.5)
    assert finished_anchors([("sft", seed0), ("dpo", seed1), ("sft", seed1)]) == Anchors(1.25, 0.3)
    assert finished_anchors([("sft", seed0)]) is None, "no DPO anchor finished: no f*"


def test_a_trial_result_is_its_last_point_and_the_initial_point_the_worst_start():
    traj = [{"step": 0, "eval/sft_loss": 3.0, "eval/dpo_loss": 0.69},
            {"step": 50, "eval/sft_loss": 2.0, "eval/dpo_loss": 0.5, "eval/pref_accuracy": 0.75,
             "time/train_s": 10.0, "time/eval_s": 2.5, "system/peak_mem_mb": 300.0}]
    r = trial_result("mix-lam0.5-seed1", "mix", 0.5, 1, traj)
    assert (r.sft_loss, r.dpo_loss, r.pref_accuracy, r.runtime_s, r.peak_mem_mb) == (2.0, 0.5, 0.75, 12.5, 300.0)
    assert (r.trial_id, r.schedule, r.lam, r.seed) == ("mix-lam0.5-seed1", "mix", 0.5, 1)
    other = [{"step": 0, "eval/sft_loss": 3.0000001, "eval/dpo_loss": 0.68}]
    resumed = [{"step": 20, "eval/sft_loss": 9.0, "eval/dpo_loss": 9.0}]  # no step-0 point: not a start
    assert initial_point([traj, other, resumed, []]) == (3.0000001, 0.69)


def test_the_behaviour_front_maximises_accuracy_and_win_rate():
    pts = [(0.9, 0.1), (0.5, 0.5), (0.4, 0.4), (0.1, 0.9), (0.5, 0.5), (math.nan, 0.99)]
    assert behaviour_front_mask(pts).tolist() == [True, True, False, True, True, False], \
        "(0.4, 0.4) is dominated; ties are kept; a NaN rate is on no front"
    # From (0, 0), the staircase (0.1, 0.9) (0.5, 0.5) (0.9, 0.1): 0.1·0.9 + 0.4·0.5 + 0.4·0.1 = 0.33
    assert behaviour_hypervolume(pts) == pytest.approx(0.33)
    assert behaviour_hypervolume([(1.0, 1.0)]) == pytest.approx(1.0) and behaviour_hypervolume([(0.0, 1.0)]) == 0.0


def test_summarize_builds_the_behaviour_front_over_cell_means():
    def r(tid, schedule, lam, seed, acc, win):
        return TrialResult(tid, schedule, lam, seed, sft_loss=1.0, dpo_loss=1.0, sft_accuracy=acc, pref_win_rate=win)

    results = [r("a0", "mix", 0.5, 0, 0.8, 0.2), r("a1", "mix", 0.5, 1, 0.6, 0.4),  # mean (0.7, 0.3)
               r("b0", "alright", 0.5, 0, 0.2, 0.9), r("c0", "sequential", 0.5, 0, 0.1, 0.1)]
    s = summarize(results, None, initial_point=(2.0, LN2), initial_behaviour=(0.0, 1.0),
                  anchor_behaviour={"sft": (0.95, 0.0), "dpo": (0.0, 0.8)})
    cells = {c.schedule: c for c in s.cells}
    assert cells["mix"].sft_accuracy.mean == pytest.approx(0.7) and cells["mix"].pref_win_rate.mean == pytest.approx(0.3)
    assert [c.schedule for c in s.behaviour_front()] == ["alright", "mix"]
    assert not cells["sequential"].on_behaviour_front
    # (0.2, 0.9) and (0.7, 0.3): 0.2·0.9 + 0.5·0.3 = 0.33
    assert s.behaviour_hypervolume["all"] == pytest.approx(0.33)
    assert s.behaviour_hypervolume["sequential"] == pytest.approx(0.01)
    assert s.initial_behaviour == (0.0, 1.0) and s.anchor_behaviour["sft"] == (0.95, 0.0)


def test_without_generations_there_is_no_behaviour_front():
    s = summarize([TrialResult("a", "mix", 0.5, 0, sft_loss=1.0, dpo_loss=1.0)], None, initial_point=(2.0, LN2))
    assert s.behaviour_front() == [] and s.behaviour_hypervolume == {}


def test_behaviour_of_the_initial_model_and_the_anchors_comes_from_their_points():
    start = {"step": 0, "gen/sft_accuracy": 0.0, "gen/pref_win_rate": 1.0}
    sft = [start, {"step": 600, "gen/sft_accuracy": 0.9, "gen/pref_win_rate": 0.0}]
    sft2 = [start, {"step": 600, "gen/sft_accuracy": 0.7, "gen/pref_win_rate": 0.2}]
    dpo = [start, {"step": 600, "gen/sft_accuracy": 0.0, "gen/pref_win_rate": 0.75}]
    assert initial_behaviour([sft, dpo, [{"step": 50, "gen/sft_accuracy": 0.5}]]) == (0.0, 1.0)
    got = anchor_behaviour([("sft", sft), ("sft", sft2), ("dpo", dpo)])
    assert got["sft"] == pytest.approx((0.8, 0.1)) and got["dpo"] == (0.0, 0.75)
    r = trial_result("t", "mix", 0.5, 0, [{**sft[-1], "eval/sft_loss": 0.1, "eval/dpo_loss": 5.0}])
    assert (r.sft_accuracy, r.pref_win_rate) == (0.9, 0.0)
    assert math.isnan(trial_result("t", "mix", 0.5, 0, [{"step": 0, "eval/sft_loss": 1, "eval/dpo_loss": 1}]).sft_accuracy)
