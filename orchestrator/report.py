"""Tables and the Pareto plot from a ``Summary`` (and the trials' trajectories)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path

from orchestrator.pareto import Cell, Interval, Summary
from orchestrator.plots import plot, plot_steps
from orchestrator.resume import model_dir
from workers.metrics import SAMPLES

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


def write_artifacts(summary: Summary, trajectories: dict[str, list[dict]], out_dir: str | Path,
                    sweep_dir: Path | None = None) -> dict[str, Path]:
    """pareto.csv (every trial), pareto_cells.csv (seed means), pareto.json, pareto.png,
    pareto_steps.png (both losses over the steps) and samples.md (the front points' answers)
    in ``out_dir``. ``sweep_dir``: where the trials' models are, a column of pareto.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "pareto.csv", "cells": out / "pareto_cells.csv", "json": out / "pareto.json", "png": out / "pareto.png",
             "samples": out / "samples.md", "steps": out / "pareto_steps.png"}
    _write_csv(paths["csv"], [{**r, "model": str(model_dir(sweep_dir, r["trial_id"])) if sweep_dir else ""}
                              for r in summary.as_records()])
    _write_csv(paths["cells"], [cell_record(c) for c in summary.cells])
    samples = front_samples(summary, trajectories)
    paths["json"].write_text(json.dumps(summary_json(summary, samples), indent=1))
    paths["samples"].write_text(samples_markdown(samples))
    plot(summary, trajectories, paths["png"])
    plot_steps(summary, trajectories, paths["steps"])
    return paths
