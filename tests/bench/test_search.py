"""§6's scoring helpers: hand-computed expectations (no torch, no Ray)."""

import pytest

from bench.search import SEEDS, ceiling, unstopped_steps


def point(schedule, lam, seed, sft, dpo):
    return {"schedule": schedule, "lam": lam, "seed": seed, "sft": sft, "dpo": dpo}


def test_the_ceiling_is_every_arms_cells_together_against_the_base_per_seed():
    # Box (2, 2), area 4. Per seed the grid has (1, 1): 1/4. The other arm adds (0.5, 1.5) for seed 0
    # (+0.5 × 0.5) and a point the grid's dominates for the other seeds.
    grid = {"points": [point("mix", 0.5, s, 1.0, 1.0) for s in SEEDS]}
    other = {"points": [point("mix", 0.9, 0, 0.5, 1.5)] + [point("mix", 0.9, s, 1.5, 1.5) for s in SEEDS[1:]]}
    c = ceiling({"grid": grid, "other": other}, "grid", (2.0, 2.0))
    assert c["per_seed"] == pytest.approx([1.25, 1.0, 1.0])
    assert c["mean"] == pytest.approx(3.25 / 3)


def test_unstopped_steps_count_only_the_trials_that_ran_to_the_end():
    grid = {"trials": 66, "optimizer_steps": 66 * 600}
    stopped = {"trials": 66, "optimizer_steps": 30_000, "stopped": {f"t{i}": {"step": 200} for i in range(25)}}
    assert unstopped_steps(stopped, grid) == pytest.approx(41 / 66)
