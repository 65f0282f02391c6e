"""Tables and the Pareto plot from a ``Summary`` (and the trials' trajectories)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path

from orchestrator.pareto import Summary

COLORS = {"sequential": "tab:green", "mix": "tab:purple", "alright": "tab:red", "maxright": "tab:blue"}
COLUMNS = [
    ("schedule", "schedule", "{}"), ("λ", "lam", "{:g}"), ("seed", "seed", "{}"),
    ("f_SFT", "sft_loss", "{:.4f}"), ("f_DPO", "dpo_loss", "{:.4f}"),
    ("gap_SFT", "gap_sft", "{:.4f}"), ("gap_DPO", "gap_dpo", "{:.4f}"), ("ideal_dist", "ideal_distance", "{:.4f}"),
    ("pref_acc", "pref_accuracy", "{:.3f}"), ("runtime_s", "runtime_s", "{:.1f}"),
    ("vs_seq_%", "runtime_vs_sequential_pct", "{:+.1f}"), ("front", "on_front", "{}"),
]


def _cell(fmt: str, value) -> str:
    if isinstance(value, bool):
        return "*" if value else ""
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return fmt.format(value)


def format_table(summary: Summary) -> str:
    header = [c[0] for c in COLUMNS]
    body = [[_cell(fmt, getattr(r, key)) for _, key, fmt in COLUMNS] for r in summary.rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    a = summary.anchors
    lines = [line(header), line(["-" * w for w in widths]), *map(line, body), ""]
    lines.append(f"anchors: f*_SFT={a.f_star_sft:.4f}  f*_DPO={a.f_star_dpo:.4f}   "
                 f"reference point (initial model): ({summary.reference_point[0]:.4f}, {summary.reference_point[1]:.4f})")
    lines.append("hypervolume: " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(summary.hypervolume.items())))
    lines.append("front (*): " + ", ".join(f"{r.schedule}@λ={r.lam:g}" for r in summary.front()))
    return "\n".join(lines)


def summary_json(summary: Summary) -> dict:
    return {
        "anchors": asdict(summary.anchors),
        "reference_point": list(summary.reference_point),
        "hypervolume": summary.hypervolume,
        "front": [r.trial_id for r in summary.front()],
        "rows": summary.as_records(),
    }


def write_artifacts(summary: Summary, trajectories: dict[str, list[dict]], out_dir: str | Path) -> dict[str, Path]:
    """pareto.csv, pareto.json and pareto.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "pareto.csv", "json": out / "pareto.json", "png": out / "pareto.png"}
    records = summary.as_records()
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["trial_id"])
        writer.writeheader()
        writer.writerows(records)
    paths["json"].write_text(json.dumps(summary_json(summary), indent=1))
    plot(summary, trajectories, paths["png"])
    return paths


def plot(summary: Summary, trajectories: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6), dpi=110)
    for r in summary.rows:
        traj = [p for p in trajectories.get(r.trial_id, []) if "eval/sft_loss" in p and "eval/dpo_loss" in p]
        if traj:
            ax.plot([p["eval/sft_loss"] for p in traj], [p["eval/dpo_loss"] for p in traj],
                    color=COLORS.get(r.schedule, "grey"), alpha=0.25, lw=0.8)
    for schedule in sorted({r.schedule for r in summary.rows}):
        rows = [r for r in summary.rows if r.schedule == schedule]
        ax.scatter([r.sft_loss for r in rows], [r.dpo_loss for r in rows], color=COLORS.get(schedule, "grey"),
                   label=schedule, s=40, zorder=3, edgecolor="white", linewidth=0.5)
        front = summary.front(schedule)
        ax.plot([r.sft_loss for r in front], [r.dpo_loss for r in front], color=COLORS.get(schedule, "grey"),
                ls="--", lw=1.0, zorder=2)
        for r in rows:
            ax.annotate(f"{r.lam:g}", (r.sft_loss, r.dpo_loss), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = summary.front()
    ax.plot([r.sft_loss for r in front], [r.dpo_loss for r in front], color="black", lw=1.6, label="Pareto front", zorder=2)
    a = summary.anchors
    ax.scatter([a.f_star_sft], [a.f_star_dpo], marker="*", s=220, color="black", label="ideal point (f*)", zorder=4)
    ref = summary.reference_point
    ax.scatter([ref[0]], [ref[1]], marker="x", s=60, color="grey", label="initial model", zorder=4)
    positive = all(v > 0 for r in summary.rows for v in (r.sft_loss, r.dpo_loss)) and a.f_star_sft > 0 and a.f_star_dpo > 0
    if positive:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("held-out SFT loss f_SFT")
    ax.set_ylabel("held-out DPO loss f_DPO")
    ax.set_title("Final trials in loss space (labels: λ), with trajectories")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
