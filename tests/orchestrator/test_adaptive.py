"""The adaptive search's choice of the next (schedule, λ), by hand."""

import pytest

from orchestrator.adaptive import contributions, nise_weight, pair_gap, propose

ENDS = {0.0: (0.0, 2.0), 1.0: (2.0, 0.0)}  # SFT alone, DPO alone
BOX = (3.0, 3.0)  # the hypervolume's reference point: the box is 9


def test_the_gap_between_two_points_is_what_their_ideal_corner_adds_to_the_front():
    a, b = (0.0, 1.0), (1.0, 0.0)
    assert pair_gap(a, b, [a, b], (2.0, 2.0)) == pytest.approx(1 / 4)  # the unit square between them, of a box of 4
    assert pair_gap((0.2, 0.8), (0.5, 0.3), [(0.2, 0.8), (0.5, 0.3)], (1.0, 1.0)) == pytest.approx(0.3 * 0.5)
    assert pair_gap((0.0, 0.0), (1.0, 1.0), [(0.0, 0.0), (1.0, 1.0)], (2.0, 2.0)) == 0.0  # the first dominates
    # Another schedule's point (0.5, 0.5) already covers [0.5, 1] × [0.5, 1] of the square.
    assert pair_gap(a, b, [a, b, (0.5, 0.5)], (2.0, 2.0)) == pytest.approx(0.75 / 4)
    assert pair_gap((1.0, 2.0), (2.0, 1.0), [(1.0, 2.0), (2.0, 1.0), (1.0, 1.0)], BOX) == 0.0  # covered whole


def test_a_pairs_area_beyond_the_box_adds_nothing():
    # The corner (0, 1) of (0, 4) and (1, 1) is in the box (3, 3); of the rectangle [0, 1] × [1, 4] only
    # [0, 1] × [1, 3] is inside it.
    assert pair_gap((0.0, 4.0), (1.0, 1.0), [(0.0, 4.0), (1.0, 1.0)], BOX) == pytest.approx(2 / 9)


def test_the_nise_weight_levels_the_scalarisation_of_both_points():
    w = nise_weight((1.0, 3.0), (2.0, 1.0))
    assert w == pytest.approx(1 / 3)
    assert (1 - w) * 1.0 + w * 3.0 == pytest.approx((1 - w) * 2.0 + w * 1.0)
    assert nise_weight((2.0, 1.0), (1.0, 3.0)) is None  # not in trade-off order (noise)


def test_a_symmetric_front_is_split_in_the_middle_of_the_first_largest_gap():
    # (0, 2), (1, 1), (2, 0): both pairs leave a unit square, 1/9 of the box.
    found = propose({"alright": {0.5: (1.0, 1.0)}}, {}, ENDS, min_width=0.1, reference=BOX)
    assert (found.schedule, found.lam) == ("alright", 0.25)
    assert "0.111 of the hypervolume box between λ 0 and 0.5" in found.reason


def test_a_pending_lambda_shares_its_pairs_gap_so_the_next_goes_elsewhere():
    found = propose({"alright": {0.5: (1.0, 1.0)}}, {"alright": {0.25}}, ENDS, min_width=0.1, reference=BOX)
    assert found.lam == 0.75  # 1/9 ÷ 2 for the pair 0–0.5 now, 1/9 for 0.5–1


def test_no_lambda_closer_than_min_width_so_a_fine_grid_is_done():
    assert propose({"alright": {0.5: (1.0, 1.0)}}, {}, ENDS, min_width=0.3, reference=BOX) is None


def test_mix_takes_the_nise_weight_the_others_the_midpoint():
    ends, box = {0.0: (0.0, 9.0), 1.0: (3.0, 0.0)}, (4.0, 10.0)
    # In a box of 40: the pair 0–0.5 leaves [0, 1] × [1, 9] (0.2 of it), the pair 0.5–1 [1, 3] × [0, 1] (0.05).
    mix = propose({"mix": {0.5: (1.0, 1.0)}}, {}, ends, min_width=0.1, reference=box)
    assert (mix.schedule, mix.lam) == ("mix", round(1 / 9, 4))  # (1−w)·0 + w·9 = (1−w)·1 + w·1
    assert "NISE weight (0.111)" in mix.reason and "0.200" in mix.reason
    other = propose({"alright": {0.5: (1.0, 1.0)}}, {}, ends, min_width=0.1, reference=box)
    assert other.lam == 0.25


def test_the_nise_weight_is_kept_min_width_inside_its_pair():
    ends = {0.0: (0.0, 100.0), 1.0: (3.0, 0.0)}  # w = 1/100 would sit on the anchor
    assert propose({"mix": {0.5: (1.0, 1.0)}}, {}, ends, min_width=0.1, reference=(4.0, 110.0)).lam == 0.1


def test_the_schedule_that_makes_the_front_gets_the_next_point():
    cells = {"mix": {0.5: (1.0, 1.0)}, "alright": {0.5: (1.5, 1.5)}}  # alright's point is dominated by mix's
    assert contributions(cells, list(ENDS.values()), BOX) == {"mix": 1.0, "alright": 0.0}
    # mix: weight 0.25 + 0.5, gap 1/9; alright: weight 0.25, gap 0.5/9 (of [0, 1.5] × [1.5, 2], mix's point
    # covers [1, 1.5] × [1.5, 2])
    assert propose(cells, {}, ENDS, min_width=0.1, reference=BOX).schedule == "mix"


def test_without_any_gap_nothing_is_proposed():
    assert propose({"mix": {}}, {}, {}, min_width=0.1, reference=BOX) is None
    assert propose({"mix": {0.5: (0.0, 0.0)}}, {}, ENDS, min_width=0.1, reference=BOX) is None  # it dominates both ends
