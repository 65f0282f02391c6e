"""Tables and the Pareto plot from a ``Summary`` (and the trials' trajectories)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path

from orchestrator.pareto import Cell, Interval, Summary
from workers.metrics import DPO_LOSS, GEN_PREF_WIN_RATE, GEN_SFT_ACCURACY, SAMPLES, SFT_LOSS
from workers.schedules import SCHEDULES

COLORS = dict(zip(SCHEDULES, ("tab:green", "tab:purple", "tab:red", "tab:blue")))
TRIAL_COLUMNS = [
    ("schedule", "schedule", "{}"), ("λ", "lam", "{:g}"), ("seed", "seed", "{}"),
    ("f_SFT", "sft_loss", "{:.4f}"), ("f_DPO", "dpo_loss", "{:.4f}"),
    ("gap_SFT", "gap_sft", "{:.4f}"), ("gap_DPO", "gap_dpo", "{:.4f}"), ("ideal_dist", "ideal_distance", "{:.4f}"),
    ("pref_acc", "pref_accuracy", "{:.3f}"), ("sft_acc", "sft_accuracy", "{:.3f}"), ("win", "pref_win_rate", "{:.3f}"),
    ("runtime_s", "runtime_s", "{:.1f}"), ("vs_seq_%", "runtime_vs_sequential_pct", "{:+.1f}"),
]
CELL_COLUMNS = [
    ("schedule", "schedule", "{}"), ("λ", "lam", "{:g}"), ("seeds", "seeds", "{}"),
    ("f_SFT", "sft_loss", "{:.4f}"), ("f_DPO", "dpo_loss", "{:.4f}"),
    ("gap_SFT", "gap_sft", "{:.4f}"), ("gap_DPO", "gap_dpo", "{:.4f}"), ("ideal_dist", "ideal_distance", "{:.4f}"),
    ("pref_acc", "pref_accuracy", "{:.3f}"), ("sft_acc", "sft_accuracy", "{:.2f}"), ("win", "pref_win_rate", "{:.2f}"),
    ("runtime_s", "runtime_s", "{:.1f}"), ("vs_seq_%", "runtime_vs_sequential_pct", "{:+.1f}"), ("front", "front", "{}"),
    ("b_front", "b_front", "{}"),
]

def front_mark(c: Cell) -> str:
    """``*`` on the front over seed means; ``~`` dominated only within the 95 % intervals."""
    return "*" if c.on_front else "~" if c.not_separable else ""


def _cell(fmt: str, value) -> str:
    if isinstance(value, Interval):
        if math.isnan(value.mean):
            return "-"
        mean = fmt.format(value.mean)
        return f"{mean} ± {fmt.format(value.high - value.mean)}" if value.known else mean
    if isinstance(value, tuple):
        return str(len(value))
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return fmt.format(value)


def _table(columns, records) -> list[str]:
    header = [c[0] for c in columns]
    body = [[_cell(fmt, rec(key)) for _, key, fmt in columns] for rec in records]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return [line(header), line(["-" * w for w in widths]), *map(line, body)]


def format_table(summary: Summary) -> str:
    trials = _table(TRIAL_COLUMNS, [lambda k, r=r: getattr(r, k) for r in summary.rows])
    marks = {"front": front_mark, "b_front": lambda c: "*" if c.on_behaviour_front else ""}
    cells = _table(CELL_COLUMNS, [lambda k, c=c: marks[k](c) if k in marks else getattr(c, k) for c in summary.cells])
    lines = ["trials (every seed):", *trials, "",
             "per schedule and λ: mean ± half-width of the 95 % interval over seeds (t); front over the means:", *cells, ""]
    a = summary.anchors
    if a is None:
        lines.append("anchors: none (no f*: gaps and ideal distances are not computed)")
    else:
        lines.append(f"anchors: f*_SFT={a.f_star_sft:.4f}  f*_DPO={a.f_star_dpo:.4f}  "
                     "(per objective, the mean over anchor seeds of each seed's best held-out loss)")
    ini, ref = summary.initial_point, summary.reference_point
    lines.append(f"initial model: ({ini[0]:.4f}, {ini[1]:.4f})")
    lines.append(f"hypervolume, share of [0, {ref[0]:.4f}] × [0, {ref[1]:.4f}] (reference point: {summary.reference_rule}): "
                 + "  ".join(f"{k}={v:.4f}" for k, v in sorted(summary.hypervolume.items())))
    lines.append("front (*): " + ", ".join(f"{c.schedule}@λ={c.lam:g}" for c in summary.front()))
    close = [f"{c.schedule}@λ={c.lam:g}" for c in summary.cells if c.not_separable]
    if close:
        lines.append("not separable from the front (~, dominated only within the 95 % intervals): " + ", ".join(close))
    if any(len(c.seeds) < 2 for c in summary.cells):
        lines.append("cells with one seed have no interval: their front membership may hinge on that seed")
    lines.extend(behaviour_lines(summary))
    if summary.numerics:
        lines.append("numerics: " + ", ".join(f"{k}={v}" for k, v in summary.numerics.items()))
    return "\n".join(lines)


def _rates(pair: tuple[float, float]) -> str:
    return f"sft_acc={_cell('{:.3f}', pair[0])} win={_cell('{:.3f}', pair[1])}"


def behaviour_lines(summary: Summary) -> list[str]:
    """The behaviour front and what it is measured against; nothing where no trial generated."""
    if not summary.behaviour_hypervolume:
        return []
    lines = [f"behaviour (greedy generations on held-out prompts, judged): initial model {_rates(summary.initial_behaviour)}"
             + "".join(f"; {k.upper()} anchors {_rates(v)}" for k, v in summary.anchor_behaviour.items())]
    lines.append("behaviour hypervolume, share of [0, 1]² (sft_acc × win, reference (0, 0)): "
                 + "  ".join(f"{k}={v:.4f}" for k, v in sorted(summary.behaviour_hypervolume.items())))
    lines.append("behaviour front (b_front *): " + ", ".join(f"{c.schedule}@λ={c.lam:g}" for c in summary.behaviour_front()))
    shares = [r.gen_s / r.runtime_s for r in summary.rows if r.runtime_s > 0 and not math.isnan(r.gen_s)]
    if shares:
        lines.append(f"generation and judging: {100 * sum(shares) / len(shares):.1f} % of a trial's loop time (steps + "
                     f"evaluation) on average, {100 * max(shares):.1f} % at most")
    return lines


def search_lines(search: dict) -> list[str]:
    """What the adaptive search added and why, what the early stopping ended where, and the
    compute the sweep spent (``search`` as ``sweep.search_record`` builds it)."""
    lines = [f"adaptive search: {len(search['proposals'])} cell(s) after the coarse grid" if search["adaptive"] else None]
    lines += [f"  {p['schedule']}@λ={p['lam']:g}: {p['reason']} ({p['known_cells']} cells known)" for p in search["proposals"]]
    if search["early_stop"]:
        lines.append(f"early stop: {len(search['stopped'])} trial(s) stopped, on no front"
                     + "".join(f"; {label} at step {s['step']} (beaten by {s['by']})" for label, s in search["stopped"].items()))
    c = search["compute"]
    lines.append(f"compute: {c['trials']} trials, {c['optimizer_steps']} optimizer steps, {c['loop_s']:.1f} s of "
                 f"training loop (steps + evaluation), stopped trials included; hypervolume all={search['hypervolume']:.4f}")
    return [line for line in lines if line is not None]


def cell_record(c: Cell) -> dict:
    out = {"schedule": c.schedule, "lam": c.lam, "seeds": list(c.seeds), "n": len(c.seeds)}
    for key in ("sft_loss", "dpo_loss", "gap_sft", "gap_dpo", "ideal_distance", "sft_accuracy", "pref_win_rate"):
        iv = getattr(c, key)
        out.update({f"{key}_mean": iv.mean, f"{key}_low": iv.low, f"{key}_high": iv.high})
    out.update(pref_accuracy=c.pref_accuracy, runtime_s=c.runtime_s, runtime_vs_sequential_pct=c.runtime_vs_sequential_pct,
               on_front=c.on_front, on_schedule_front=c.on_schedule_front, not_separable=c.not_separable,
               on_behaviour_front=c.on_behaviour_front)
    return out


def front_samples(summary: Summary, trajectories: dict[str, list[dict]]) -> list[dict]:
    """Each front cell's answers to the sample prompts (the loss front's cells, then those
    only on the behaviour front): those of its lowest seed's final model, the same prompts
    for every cell."""
    loss, behaviour = summary.front(), summary.behaviour_front()
    out = []
    for c in loss + [c for c in behaviour if not c.on_front]:
        row = min((r for r in summary.rows if (r.schedule, r.lam) == (c.schedule, c.lam)), key=lambda r: r.seed)
        samples = next((p[SAMPLES] for p in reversed(trajectories.get(row.trial_id, [])) if SAMPLES in p), None)
        if samples:
            fronts = [name for name, on in (("loss", c.on_front), ("behaviour", c.on_behaviour_front)) if on]
            out.append({"cell": f"{c.schedule}@{c.lam:g}", "fronts": fronts, "trial": row.trial_id, "samples": samples})
    return out


def _md(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "\\|").replace("\n", " ") + "`" if text else "(empty)"


def samples_markdown(records: list[dict]) -> str:
    """One table per sample prompt: every front cell's answer, and whether the judge passed it."""
    lines = ["# Answers of the front points", "",
             "Greedy generations of each front cell's lowest seed at its last evaluation.", ""]
    if not records:
        return "\n".join(lines + ["No trial logged samples (trial.behaviour.samples = 0, or no generation)."]) + "\n"
    for i, first in enumerate(records[0]["samples"]):
        lines += [f"## {first['kind']} prompt {_md(first['prompt'])}", "", f"reference: {_md(first['reference'])}", "",
                  "| cell | fronts | answer | judged |", "|---|---|---|---|"]
        for rec in records:
            if i < len(rec["samples"]):
                sample = rec["samples"][i]
                judged = {True: "pass", False: "fail", None: "-"}.get(sample["passed"], f"{sample['passed']:.2f}")
                lines.append(f"| {rec['cell']} | {', '.join(rec['fronts'])} | {_md(sample['generation'])} | {judged} |")
        lines.append("")
    return "\n".join(lines)


def summary_json(summary: Summary, samples: list[dict] | None = None) -> dict:
    return {
        "anchors": asdict(summary.anchors) if summary.anchors else None,
        "initial_point": list(summary.initial_point),
        "hypervolume": summary.hypervolume,
        "hypervolume_reference": {"point": list(summary.reference_point), "rule": summary.reference_rule,
                                  "normalised_by": "the box from (0, 0) to the reference point"},
        "front": [f"{c.schedule}@{c.lam:g}" for c in summary.front()],
        "not_separable": [f"{c.schedule}@{c.lam:g}" for c in summary.cells if c.not_separable],
        "behaviour_front": [f"{c.schedule}@{c.lam:g}" for c in summary.behaviour_front()],
        "behaviour_hypervolume": summary.behaviour_hypervolume,
        "initial_behaviour": list(summary.initial_behaviour),
        "anchor_behaviour": {k: list(v) for k, v in summary.anchor_behaviour.items()},
        "numerics": summary.numerics,
        "cells": [cell_record(c) for c in summary.cells],
        "rows": summary.as_records(),
        "front_samples": samples or [],
    }


def _write_csv(path: Path, records: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["trial_id"])
        writer.writeheader()
        writer.writerows(records)


def write_artifacts(summary: Summary, trajectories: dict[str, list[dict]], out_dir: str | Path) -> dict[str, Path]:
    """pareto.csv (every trial), pareto_cells.csv (seed means), pareto.json, pareto.png and
    samples.md (the front points' answers) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "pareto.csv", "cells": out / "pareto_cells.csv", "json": out / "pareto.json", "png": out / "pareto.png",
             "samples": out / "samples.md"}
    _write_csv(paths["csv"], summary.as_records())
    _write_csv(paths["cells"], [cell_record(c) for c in summary.cells])
    samples = front_samples(summary, trajectories)
    paths["json"].write_text(json.dumps(summary_json(summary, samples), indent=1))
    paths["samples"].write_text(samples_markdown(samples))
    plot(summary, trajectories, paths["png"])
    return paths


def _errors(ivs: list[Interval], top: float = math.inf) -> list[list[float]]:
    """Matplotlib's asymmetric error bars, cut at 0 (a loss or a rate is never negative) and
    at ``top`` (a rate is at most 1); none where there is no interval."""
    return [[iv.mean - max(iv.low, 0.0) if iv.known else 0.0 for iv in ivs],
            [min(iv.high, top) - iv.mean if iv.known else 0.0 for iv in ivs]]


def plot(summary: Summary, trajectories: dict[str, list[dict]], path: Path) -> None:
    """The loss front, and beside it the behaviour front when the trials generated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    behaviour = bool(summary.behaviour_hypervolume)
    fig, axes = plt.subplots(1, 2 if behaviour else 1, figsize=(14, 6) if behaviour else (7.5, 6), dpi=110, squeeze=False)
    _loss_panel(axes[0][0], summary, trajectories)
    if behaviour:
        _behaviour_panel(axes[0][1], summary, trajectories)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _seeds_and_intervals(ax, summary: Summary, schedule: str, x: str, y: str, top: float = math.inf) -> list[Cell]:
    """One schedule's single seeds (small dots), its cells' 95 % intervals and λ labels on
    the axes ``x``, ``y`` (fields of a row and of a cell); returns its cells."""
    color = COLORS.get(schedule, "grey")
    seeds = [r for r in summary.rows if r.schedule == schedule]
    ax.scatter([getattr(r, x) for r in seeds], [getattr(r, y) for r in seeds], color=color, s=8, alpha=0.35, zorder=2)
    cells = [c for c in summary.cells if c.schedule == schedule]
    xs, ys = [getattr(c, x) for c in cells], [getattr(c, y) for c in cells]
    ax.errorbar([v.mean for v in xs], [v.mean for v in ys], xerr=_errors(xs, top), yerr=_errors(ys, top),
                fmt="none", ecolor=color, elinewidth=0.9, capsize=2, zorder=3)
    for c, vx, vy in zip(cells, xs, ys):
        ax.annotate(f"{c.lam:g}", (vx.mean, vy.mean), fontsize=7, xytext=(3, 3), textcoords="offset points")
    return cells


def _loss_panel(ax, summary: Summary, trajectories: dict[str, list[dict]]) -> None:
    for r in summary.rows:
        traj = [p for p in trajectories.get(r.trial_id, []) if SFT_LOSS in p and DPO_LOSS in p]
        if traj:
            ax.plot([p[SFT_LOSS] for p in traj], [p[DPO_LOSS] for p in traj],
                    color=COLORS.get(r.schedule, "grey"), alpha=0.15, lw=0.7)
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
    a = summary.anchors
    if a is not None:
        ax.scatter([a.f_star_sft], [a.f_star_dpo], marker="*", s=220, color="black", label="ideal point (f*)", zorder=5)
    ini = summary.initial_point
    ax.scatter([ini[0]], [ini[1]], marker="x", s=60, color="grey", label="initial model", zorder=5)
    # Log scales show both ends of the front; the DPO loss gets a linear stretch near 0, where
    # a DPO-only trial drives it (to 1e-9 and below) and a log axis would spend its height.
    if all(r.sft_loss > 0 for r in summary.rows) and (a is None or a.f_star_sft > 0):
        ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("held-out SFT loss f_SFT")
    ax.set_ylabel("held-out DPO loss f_DPO")
    n = sorted({len(c.seeds) for c in summary.cells})
    ax.set_title(f"Losses: seed means with 95 % intervals ({'/'.join(map(str, n))} seeds; hollow: not separable from the "
                 "front),\nsingle seeds (small dots) and trajectories (labels: λ)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _behaviour_panel(ax, summary: Summary, trajectories: dict[str, list[dict]]) -> None:
    """(SFT accuracy, win rate), both maximised: the front runs along the top right."""
    for r in summary.rows:
        traj = [p for p in trajectories.get(r.trial_id, []) if GEN_SFT_ACCURACY in p and GEN_PREF_WIN_RATE in p]
        if traj:
            ax.plot([p[GEN_SFT_ACCURACY] for p in traj], [p[GEN_PREF_WIN_RATE] for p in traj],
                    color=COLORS.get(r.schedule, "grey"), alpha=0.15, lw=0.7)
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
    ax.set_xlabel("gen/sft_accuracy (held-out SFT prompts)")
    ax.set_ylabel("gen/pref_win_rate (held-out preference prompts)")
    ax.set_title("Behaviour: greedy generations, judged; seed means with 95 % intervals\n"
                 "(higher is better on both axes; labels: λ)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
