"""The benchmark's aggregation: hand-computed expectations (no torch, no Ray)."""

import math

import pytest

from bench import stats


def trial(schedule, lam, seed, sft, dpo, train_s=9.0, eval_s=1.0, mem=500.0, **extra):
    return {"schedule": schedule, "lam": lam, "seed": seed, "sft_loss": sft, "dpo_loss": dpo, "pref_accuracy": 1.0,
            "train_s": train_s, "eval_s": eval_s, "peak_mem_mb": mem, **extra}


def test_f_star_is_the_mean_over_seeds_of_each_anchors_best():
    anchors = [
        {"objective": "sft", "seed": 0, "best_sft_loss": 0.30, "best_dpo_loss": 9.0},
        {"objective": "sft", "seed": 1, "best_sft_loss": 0.25, "best_dpo_loss": 9.0},
        {"objective": "dpo", "seed": 0, "best_sft_loss": 0.01, "best_dpo_loss": 0.05},  # an SFT loss here is not f*_SFT
    ]
    assert stats.f_star(anchors) == pytest.approx((0.275, 0.05))
    with pytest.raises(ValueError):
        stats.f_star(anchors[:2])


def test_derive_gaps_distance_and_costs_against_the_same_lambda_and_seed():
    trials = [
        trial("seq_dpo_sft", 0.5, 0, sft=1.0, dpo=2.0, train_s=9.0, eval_s=1.0, mem=400.0),
        trial("alright", 0.5, 0, sft=0.5, dpo=0.5, train_s=11.0, eval_s=1.0, mem=500.0),
        trial("alright", 0.5, 1, sft=0.5, dpo=0.5),  # no Sequential for seed 1
    ]
    seq, alr, orphan = stats.derive(trials, star=(0.2, 0.1))
    assert seq["gap_sft"] == pytest.approx(0.8) and seq["gap_dpo"] == pytest.approx(1.9)
    assert seq["runtime_pct"] == 0.0 and seq["peak_mem_pct"] == 0.0
    assert alr["ideal_distance"] == pytest.approx(math.hypot(0.3, 0.4)) == pytest.approx(0.5)
    assert alr["runtime_pct"] == pytest.approx(20.0)  # 12 s against 10 s
    assert alr["peak_mem_pct"] == pytest.approx(25.0)
    assert math.isnan(orphan["runtime_pct"]) and math.isnan(orphan["peak_mem_pct"])


def test_table_means_and_sample_stds_over_seeds():
    assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert stats.mean_std([4.0]) == (4.0, 0.0)
    trials = [trial("seq_dpo_sft", 0.5, s, sft=1.0, dpo=1.0) for s in (0, 1)]
    trials += [trial("mix", 0.5, 0, sft=0.2, dpo=0.1), trial("mix", 0.5, 1, sft=0.4, dpo=0.1)]
    cells = stats.table(stats.derive(trials, star=(0.0, 0.1)))
    mix = cells[("mix", 0.5)]
    assert mix["n"] == 2
    assert mix["gap_sft"] == pytest.approx((0.3, math.sqrt(0.02)))
    assert mix["ideal_distance"][0] == pytest.approx(0.3)


def test_pooled_ratio_sums_over_the_cells_both_sides_have():
    trials = [trial("seq_dpo_sft", 0.1, 0, 1, 1, train_s=10.0, eval_s=0.0), trial("alright", 0.1, 0, 1, 1, train_s=8.0, eval_s=0.0),
              trial("seq_dpo_sft", 0.9, 0, 1, 1, train_s=30.0, eval_s=0.0), trial("alright", 0.9, 0, 1, 1, train_s=36.0, eval_s=0.0),
              trial("alright", 0.5, 0, 1, 1, train_s=99.0, eval_s=0.0)]  # no baseline: left out
    assert stats.pooled_ratio(trials, "alright", "seq_dpo_sft", stats.runtime_s) == pytest.approx(44.0 / 40.0)
    assert math.isnan(stats.pooled_ratio(trials, "mix", "seq_dpo_sft", stats.runtime_s))


def test_claims_report_where_an_ordering_fails():
    lams = [0.5]
    trials = [
        trial("seq_dpo_sft", 0.5, 0, sft=2.0, dpo=2.0, train_s=10.0, eval_s=0.0),
        trial("mix", 0.5, 0, sft=0.2, dpo=0.2, train_s=15.0, eval_s=0.0),      # +50 %
        trial("alright", 0.5, 0, sft=0.4, dpo=0.4, train_s=10.0, eval_s=0.0),  # +0 %
        trial("maxright", 0.5, 0, sft=0.6, dpo=0.6, train_s=16.0, eval_s=0.0),  # +60 %, and farther than ALRIGHT
    ]
    cells = stats.table(stats.derive(trials, star=(0.0, 0.0)))
    verdicts = {c["claim"].split(" (paper")[0]: c["holds"] for c in stats.claims(cells, lams)}
    assert verdicts["ALRIGHT runtime vs Sequential is -24 % … +2 %"] is True
    assert verdicts["MAXRIGHT runtime vs Sequential is -4 % … +11 %"] is False
    assert verdicts["Mix costs more than ALRIGHT and MAXRIGHT at every λ"] is False
    assert verdicts["Every joint schedule ends closer to the ideal point than Sequential, at every λ"] is True
    assert verdicts["At λ = 0.5 MAXRIGHT ends closer to the ideal point than ALRIGHT"] is None  # one seed: no interval
    assert verdicts["At λ = 0.5 every joint schedule ends far closer to the ideal point than Sequential"] is True


def test_a_difference_within_the_seeds_spread_is_not_a_verdict():
    trials = [trial("seq_dpo_sft", 0.5, s, sft=2.0, dpo=2.0) for s in (0, 1)]
    trials += [trial("mix", 0.5, s, sft=0.2, dpo=0.0) for s in (0, 1)]
    trials += [trial("alright", 0.5, 0, sft=0.30, dpo=0.0), trial("alright", 0.5, 1, sft=0.50, dpo=0.0)]  # 0.4 ± 0.14
    trials += [trial("maxright", 0.5, 0, sft=0.35, dpo=0.0), trial("maxright", 0.5, 1, sft=0.41, dpo=0.0)]  # 0.38 ± 0.04
    cells = stats.table(stats.derive(trials, star=(0.0, 0.0)))
    claim = next(c for c in stats.claims(cells, [0.5]) if c["claim"].startswith("At λ = 0.5 MAXRIGHT"))
    assert claim["holds"] is None


def test_intervals_apart_are_a_verdict():
    """ALRIGHT 0.40, 0.41, 0.42 (ideal distance ×√2) against MAXRIGHT 0.60, 0.61, 0.62: the
    95 % intervals (half-width 4.303·0.01·√2/√3 ≈ 0.035) are far apart."""
    trials = [trial("seq_dpo_sft", 0.5, s, sft=2.0, dpo=2.0) for s in (0, 1, 2)]
    trials += [trial("mix", 0.5, s, sft=0.2, dpo=0.2) for s in (0, 1, 2)]
    trials += [trial("alright", 0.5, s, sft=v, dpo=v) for s, v in enumerate([0.40, 0.41, 0.42])]
    trials += [trial("maxright", 0.5, s, sft=v, dpo=v) for s, v in enumerate([0.60, 0.61, 0.62])]
    cells = stats.table(stats.derive(trials, star=(0.0, 0.0)))
    assert stats.half95(cells[("alright", 0.5)], "ideal_distance") == pytest.approx(4.302653 * 0.01 * math.sqrt(2) / math.sqrt(3), rel=1e-4)
    claim = next(c for c in stats.claims(cells, [0.5]) if c["claim"].startswith("At λ = 0.5 MAXRIGHT"))
    assert claim["holds"] is False
