"""The report's figures read themselves: axes fitted to the cells, the ideal point marked or
pointed at, no two λ labels on top of each other, every drawn kind of line in the legend,
and a figure of the losses over the steps."""

import math

import pytest

from orchestrator.pareto import Anchors, TrialResult, summarize
from orchestrator.plots import cell_curves, fitted_axis, frame_with_ideal, front_figure, steps_figure


def test_fitted_axis_by_hand():
    # 0.5 … 4: linear, a margin of 6 % of the span 3.5 (0.21) each side, never below 0.
    assert fitted_axis([0.5, 1.0, 4.0]) == pytest.approx(("linear", 0.29, 4.21))
    assert fitted_axis([0.1, 0.2])[1] == pytest.approx(0.094)
    # 0.01 … 10 spans 1000×: log, a margin of 6 % of 3 decades each side.
    scale, lo, hi = fitted_axis([0.01, 10.0, math.nan])
    assert scale == "log" and lo == pytest.approx(10 ** -2.18) and hi == pytest.approx(10 ** 1.18)
    assert fitted_axis([0.0, 0.01, 10.0]) == (scale, lo, hi), "an interval cut at 0 keeps the log axis"


def test_a_near_ideal_point_is_taken_into_the_frame_a_far_one_is_not():
    assert frame_with_ideal([3.0, 4.0], 2.5) == fitted_axis([2.5, 3.0, 4.0])  # span 1.5 ≤ 2 × 1
    assert frame_with_ideal([3.0, 4.0], 1.0) == fitted_axis([3.0, 4.0])  # span 3 > 2
    assert frame_with_ideal([3.0, 4.0], math.nan) == fitted_axis([3.0, 4.0])


LAMS = [0.2, 0.25, 0.3, 0.5, 0.75]


def crowded():
    """Four schedules whose cells sit close together (λ labels would overlap), two seeds
    each, and an ideal point far below the frame (f*_DPO = 1e-6, as a DPO anchor reaches)."""
    results, trajectories = [], {}
    for k, schedule in enumerate(("sequential", "mix", "alright", "maxright")):
        for lam in LAMS:
            for seed in (0, 1):
                sft, dpo = 0.6 + 0.3 * lam + 0.02 * k + 0.01 * seed, 0.7 - 0.3 * lam + 0.01 * k
                label = f"{schedule}-lam{lam:g}-seed{seed}"
                results.append(TrialResult(label, schedule, lam, seed, sft, dpo))
                trajectories[label] = [{"step": 0, "eval/sft_loss": 2.3, "eval/dpo_loss": 0.69},
                                       {"step": 20, "eval/sft_loss": 30.0, "eval/dpo_loss": 1e-3},  # far off the frame
                                       {"step": 40, "eval/sft_loss": sft, "eval/dpo_loss": dpo}]
    return summarize(results, Anchors(0.05, 1e-6), initial_point=(2.3, 0.69)), trajectories


def test_the_loss_panel_fits_the_cells_points_at_the_ideal_and_its_labels_do_not_overlap():
    summary, trajectories = crowded()
    fig = front_figure(summary, trajectories)
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    xs = [c.sft_loss.mean for c in summary.cells] + [2.3]
    ys = [c.dpo_loss.mean for c in summary.cells] + [0.69]
    assert x0 <= min(xs) and max(xs) <= x1 and y0 <= min(ys) and max(ys) <= y1
    assert x1 < 3.5 and y0 > 0.2, "the frame is the cells' and the initial model's, not the trajectories'"
    notes = [t.get_text() for t in ax.texts if t.get_text().startswith("ideal point")]
    assert notes == ["ideal point f* = (0.05, 1e-06), outside the frame"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts if t.get_text() in {f"{lam:g}" for lam in LAMS}]
    assert len(boxes) == len(summary.cells)
    overlapping = sum(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert overlapping <= len(boxes) // 10, f"{overlapping} pairs of λ labels overlap"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for entry in ("sequential", "mix", "alright", "maxright", "Pareto front (seed means)", "initial model",
                  "a schedule's own front (dashed)", "trial trajectories (faint)", "single seeds", "95 % interval over seeds"):
        assert entry in legend, entry


def test_an_ideal_point_inside_the_frame_is_a_star():
    summary, trajectories = crowded()
    summary.anchors = Anchors(0.7, 0.6)
    ax = front_figure(summary, trajectories).axes[0]
    assert "ideal point (f*)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert not [t for t in ax.texts if t.get_text().startswith("ideal point")]


def test_the_steps_figure_has_a_seed_mean_line_per_cell():
    summary, trajectories = crowded()
    steps, sft = cell_curves(summary, trajectories, "eval/sft_loss")[("mix", 0.5)]
    assert steps == [0, 20, 40] and sft == pytest.approx([2.3, 30.0, 0.6 + 0.15 + 0.02 + 0.005])
    fig = steps_figure(summary, trajectories)
    for ax in fig.axes:
        assert len([ln for ln in ax.get_lines() if ln.get_label().startswith(("sequential", "mix", "alright", "maxright"))]) == 20
    assert "f_DPO* (anchors' best)" in [ln.get_label() for ln in fig.axes[1].get_lines()]
