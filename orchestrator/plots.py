"""The report's figures from a ``Summary`` and the trials' trajectories: ``pareto.png`` (the
loss front, and the behaviour front when the trials generated) and ``pareto_steps.png``
(both held-out losses over the optimizer steps, per cell)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from orchestrator.pareto import Cell, Interval, Summary
from workers.metrics import DPO_LOSS, GEN_PREF_WIN_RATE, GEN_SFT_ACCURACY, SFT_LOSS, STEP
from workers.schedules import SCHEDULES

COLORS = dict(zip(SCHEDULES, ("tab:green", "tab:purple", "tab:red", "tab:blue")))
MARGIN = 0.06  # of the frame's span (of its log span on a log axis), around what it fits
LOG_SPAN = 20.0  # an axis whose positive values span more than this factor is drawn on a log scale


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errors(ivs: list[Interval], top: float = math.inf) -> list[list[float]]:
    """Matplotlib's asymmetric error bars, cut at 0 (a loss or a rate is never negative) and
    at ``top`` (a rate is at most 1); none where there is no interval."""
    return [[iv.mean - max(iv.low, 0.0) if iv.known else 0.0 for iv in ivs],
            [min(iv.high, top) - iv.mean if iv.known else 0.0 for iv in ivs]]


def fitted_axis(values: list[float]) -> tuple[str, float, float]:
    """(scale, low, high) of an axis that fits ``values`` (the cells' means, their intervals
    and the initial model) with a margin: log when they are ≥ 0 and the positive ones span
    more than ``LOG_SPAN`` (zeros then fall below the frame), else linear. Trajectories and
    the ideal point may lie outside."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    lo, hi = float(v.min()), float(v.max())
    positive = v[v > 0]
    # An interval cut at 0 does not make the axis linear: on a log axis it runs out of the frame.
    if lo >= 0 and len(positive) and positive.max() / positive.min() > LOG_SPAN:
        lo, hi = float(positive.min()), float(positive.max())
        pad = (math.log10(hi) - math.log10(lo)) * MARGIN
        return "log", 10 ** (math.log10(lo) - pad), 10 ** (math.log10(hi) + pad)
    pad = (hi - lo) * MARGIN or max(abs(hi), 1e-3) * MARGIN
    return "linear", max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad


def _span(scale: str, lo: float, hi: float) -> float:
    return math.log10(hi / lo) if scale == "log" else hi - lo


def frame_with_ideal(values: list[float], ideal: float) -> tuple[str, float, float]:
    """``fitted_axis`` of ``values``, stretched to take in the ideal point when that at most
    doubles the span; a far ideal (f*_DPO ≈ 1e-6 under losses near 0.7) stays outside."""
    fit = fitted_axis(values)
    if not math.isfinite(ideal):
        return fit
    wider = fitted_axis([*values, ideal])
    return wider if wider[0] == fit[0] and _span(*wider) <= 2 * _span(*fit) else fit


def _interval_ends(ivs: list[Interval]) -> list[float]:
    return [x for iv in ivs for x in ((max(iv.low, 0.0), iv.high) if iv.known else (iv.mean,))]


def _lambda_labels(ax, cells: list[Cell], x: str, y: str) -> None:
    """λ beside each cell's mean, moved apart where they would overlap (adjustText)."""
    from adjustText import adjust_text

    shown = [c for c in cells if math.isfinite(getattr(c, x).mean) and math.isfinite(getattr(c, y).mean)]
    xs, ys = [getattr(c, x).mean for c in shown], [getattr(c, y).mean for c in shown]
    texts = [ax.text(a, b, f"{c.lam:g}", fontsize=7, color=COLORS.get(c.schedule, "grey")) for c, a, b in zip(shown, xs, ys)]
    if texts:  # away from each other and from the cells' markers
        adjust_text(texts, x=xs, y=ys, ax=ax, expand=(1.3, 1.5), arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"})


def _seeds_and_intervals(ax, summary: Summary, schedule: str, x: str, y: str, top: float = math.inf) -> list[Cell]:
    """One schedule's single seeds (small dots) and its cells' 95 % intervals on the axes
    ``x``, ``y`` (fields of a row and of a cell); returns its cells."""
    color = COLORS.get(schedule, "grey")
    seeds = [r for r in summary.rows if r.schedule == schedule]
    ax.scatter([getattr(r, x) for r in seeds], [getattr(r, y) for r in seeds], color=color, s=8, alpha=0.35, zorder=2)
    cells = [c for c in summary.cells if c.schedule == schedule]
    xs, ys = [getattr(c, x) for c in cells], [getattr(c, y) for c in cells]
    ax.errorbar([v.mean for v in xs], [v.mean for v in ys], xerr=_errors(xs, top), yerr=_errors(ys, top),
                fmt="none", ecolor=color, elinewidth=0.9, capsize=2, zorder=3)
    return cells


def _key_handles(dashed: bool) -> list:
    """Legend entries for what every schedule draws in its own colour (shown here in grey)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="grey", alpha=0.4, lw=0.7, label="trial trajectories (faint)"),
               Line2D([], [], color="grey", marker="o", ms=3, alpha=0.5, ls="none", label="single seeds"),
               Line2D([], [], color="grey", marker="|", ms=8, lw=0.9, label="95 % interval over seeds")]
    if dashed:
        handles.insert(0, Line2D([], [], color="grey", ls="--", lw=1.0, label="a schedule's own front (dashed)"))
    return handles


def _mark_ideal(ax, point: tuple[float, float], xlim, ylim) -> None:
    """The ideal point as a star inside the frame, or, outside it, an arrow from the frame's
    edge towards it with its coordinates."""
    x, y = point
    inside = xlim[0] <= x <= xlim[1] and ylim[0] <= y <= ylim[1]
    if inside:
        ax.scatter([x], [y], marker="*", s=220, color="black", label="ideal point (f*)", zorder=5)
        return
    at = (min(max(x, xlim[0]), xlim[1]), min(max(y, ylim[0]), ylim[1]))
    ax.annotate(f"ideal point f* = ({x:.3g}, {y:.3g}), outside the frame", xy=at, xytext=(14, 10),
                textcoords="offset points", fontsize=7, ha="left", va="bottom", zorder=6,
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8},
                arrowprops={"arrowstyle": "->", "lw": 1.0})


def _paths(ax, summary: Summary, trajectories: dict[str, list[dict]], x: str, y: str) -> None:
    """Each trial's path through the (``x``, ``y``) plane of its evaluations, faint."""
    for r in summary.rows:
        traj = [p for p in trajectories.get(r.trial_id, []) if x in p and y in p]
        if traj:
            ax.plot([p[x] for p in traj], [p[y] for p in traj], color=COLORS.get(r.schedule, "grey"), alpha=0.15, lw=0.7)


def _loss_panel(ax, summary: Summary, trajectories: dict[str, list[dict]]) -> None:
    _paths(ax, summary, trajectories, SFT_LOSS, DPO_LOSS)
    for schedule in sorted({c.schedule for c in summary.cells}):
        color = COLORS.get(schedule, "grey")
        cells = _seeds_and_intervals(ax, summary, schedule, "sft_loss", "dpo_loss")
        solid = [c for c in cells if not c.not_separable]
        ax.scatter([c.sft_loss.mean for c in solid], [c.dpo_loss.mean for c in solid], color=color, label=schedule,
                   s=44, zorder=4, edgecolor="white", linewidth=0.5)
        hollow = [c for c in cells if c.not_separable]
        ax.scatter([c.sft_loss.mean for c in hollow], [c.dpo_loss.mean for c in hollow], facecolor="white",
                   edgecolor=color, s=44, zorder=4, linewidth=1.2)
        front = summary.front(schedule)
        ax.plot([c.sft_loss.mean for c in front], [c.dpo_loss.mean for c in front], color=color, ls="--", lw=1.0, zorder=2)
    front = summary.front()
    ax.plot([c.sft_loss.mean for c in front], [c.dpo_loss.mean for c in front], color="black", lw=1.6,
            label="Pareto front (seed means)", zorder=2)
    ini = summary.initial_point
    ax.scatter([ini[0]], [ini[1]], marker="x", s=60, color="grey", label="initial model", zorder=5)
    star = (summary.anchors.f_star_sft, summary.anchors.f_star_dpo) if summary.anchors is not None else (math.nan, math.nan)
    for axis, field, value, ideal in (("x", "sft_loss", ini[0], star[0]), ("y", "dpo_loss", ini[1], star[1])):
        scale, lo, hi = frame_with_ideal(_interval_ends([getattr(c, field) for c in summary.cells]) + [value], ideal)
        getattr(ax, f"set_{axis}scale")(scale)
        getattr(ax, f"set_{axis}lim")(lo, hi)
    if summary.anchors is not None:
        _mark_ideal(ax, (summary.anchors.f_star_sft, summary.anchors.f_star_dpo), ax.get_xlim(), ax.get_ylim())
    _lambda_labels(ax, summary.cells, "sft_loss", "dpo_loss")
    ax.set_xlabel("held-out SFT loss f_SFT (lower is better)")
    ax.set_ylabel("held-out DPO loss f_DPO (lower is better)")
    n = sorted({len(c.seeds) for c in summary.cells})
    ax.set_title(f"Losses: seed means ({'/'.join(map(str, n))} seed{'s' if n[-1] > 1 else ''}; hollow: not separable from "
                 "the front; labels: λ)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + _key_handles(dashed=True), fontsize=7, loc="best")


def _behaviour_panel(ax, summary: Summary, trajectories: dict[str, list[dict]]) -> None:
    """(SFT accuracy, win rate), both maximised: the front runs along the top right."""
    _paths(ax, summary, trajectories, GEN_SFT_ACCURACY, GEN_PREF_WIN_RATE)
    for schedule in sorted({c.schedule for c in summary.cells}):
        cells = _seeds_and_intervals(ax, summary, schedule, "sft_accuracy", "pref_win_rate", top=1.0)
        ax.scatter([c.sft_accuracy.mean for c in cells], [c.pref_win_rate.mean for c in cells],
                   color=COLORS.get(schedule, "grey"), label=schedule, s=44, zorder=4, edgecolor="white", linewidth=0.5)
    front = summary.behaviour_front()
    ax.plot([c.sft_accuracy.mean for c in front], [c.pref_win_rate.mean for c in front], color="black", lw=1.6,
            label="behaviour front (seed means)", zorder=2)
    markers = {"sft": ("s", "SFT anchors"), "dpo": ("D", "DPO anchors")}
    for objective, (acc, win) in summary.anchor_behaviour.items():
        ax.scatter([acc], [win], marker=markers[objective][0], s=60, color="black", label=markers[objective][1], zorder=5)
    ini = summary.initial_behaviour
    ax.scatter([ini[0]], [ini[1]], marker="x", s=60, color="grey", label="initial model", zorder=5)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    _lambda_labels(ax, summary.cells, "sft_accuracy", "pref_win_rate")
    ax.set_xlabel("gen/sft_accuracy (held-out SFT prompts; higher is better)")
    ax.set_ylabel("gen/pref_win_rate (held-out preference prompts; higher is better)")
    ax.set_title("Behaviour: greedy generations, judged; seed means (labels: λ)", fontsize=9)
    ax.grid(True, alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + _key_handles(dashed=False), fontsize=7, loc="best")


def front_figure(summary: Summary, trajectories: dict[str, list[dict]]):
    """The loss front, and beside it the behaviour front when the trials generated."""
    behaviour = bool(summary.behaviour_hypervolume)
    fig, axes = _pyplot().subplots(1, 2 if behaviour else 1, figsize=(14, 6) if behaviour else (7.5, 6), dpi=110,
                                   squeeze=False)
    _loss_panel(axes[0][0], summary, trajectories)
    if behaviour:
        _behaviour_panel(axes[0][1], summary, trajectories)
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> None:
    fig.savefig(path)
    _pyplot().close(fig)


def plot(summary: Summary, trajectories: dict[str, list[dict]], path: Path) -> None:
    _save(front_figure(summary, trajectories), path)


def cell_curves(summary: Summary, trajectories: dict[str, list[dict]], key: str) -> dict[tuple[str, float], tuple[list, list]]:
    """Per cell, (steps, the mean of ``key`` over the seeds that evaluated at each step)."""
    out = {}
    for c in summary.cells:
        by_step: dict[int, list[float]] = {}
        for r in summary.rows:
            if (r.schedule, r.lam) == (c.schedule, c.lam):
                for p in trajectories.get(r.trial_id, []):
                    if key in p:
                        by_step.setdefault(int(p[STEP]), []).append(p[key])
        steps = sorted(by_step)
        out[(c.schedule, c.lam)] = (steps, [float(np.mean(by_step[s])) for s in steps])
    return out


def steps_figure(summary: Summary, trajectories: dict[str, list[dict]]):
    """Both held-out losses over the optimizer steps: a line per cell (seed mean), darker for
    a larger λ, the anchors' best losses (f*) dotted."""
    fig, axes = _pyplot().subplots(1, 2, figsize=(13, 4.8), dpi=110)
    lams = sorted({c.lam for c in summary.cells})
    for ax, key, star, name in ((axes[0], SFT_LOSS, "f_star_sft", "f_SFT"), (axes[1], DPO_LOSS, "f_star_dpo", "f_DPO")):
        values = []
        for (schedule, lam), (steps, ys) in sorted(cell_curves(summary, trajectories, key).items()):
            shade = 0.45 + 0.55 * (lams.index(lam) + 1) / len(lams)
            ax.plot(steps, ys, color=COLORS.get(schedule, "grey"), alpha=shade, lw=1.2,
                    label=f"{schedule} λ={lam:g}")
            values += ys
        if summary.anchors is not None:
            ax.axhline(getattr(summary.anchors, star), color="black", ls=":", lw=1.0, label=f"{name}* (anchors' best)")
        if values:
            scale, lo, hi = fitted_axis(values)
            ax.set_yscale(scale)
            ax.set_ylim(lo, hi)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"held-out {name} (seed mean)")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("Held-out losses over the steps, per cell (darker: larger λ)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_steps(summary: Summary, trajectories: dict[str, list[dict]], path: Path) -> None:
    _save(steps_figure(summary, trajectories), path)
