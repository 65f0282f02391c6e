"""The figure of §1: loss-space fronts with the ideal point, and bars of ideal distance
and runtime % per λ."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bench import stats  # noqa: E402
from bench.common import RESULTS  # noqa: E402
from workers.schedules import ALRIGHT, MAXRIGHT, MIX

COLORS = {"seq_dpo_sft": "tab:green", "seq_sft_dpo": "tab:olive", MIX: "tab:purple", ALRIGHT: "tab:red", MAXRIGHT: "tab:blue"}


def paper_figure(data: dict):
    star = tuple(data["f_star"])
    cells = stats.table(stats.derive(data["trials"], star))
    lams, schedules = data["setup"]["lams"], data["setup"]["schedules"]
    fig, (ax, ax_d, ax_r) = plt.subplots(1, 3, figsize=(17, 5.2), dpi=100)

    summary = stats.front(data["trials"], star)
    for s in schedules:
        pts = [t for t in data["trials"] if t["schedule"] == s]
        ax.scatter([t["sft_loss"] for t in pts], [t["dpo_loss"] for t in pts], color=COLORS[s], s=10, alpha=0.35)
        mine = sorted((c for c in summary.cells if c.schedule == s), key=lambda c: c.lam)
        x, y = [c.sft_loss for c in mine], [c.dpo_loss for c in mine]
        err = lambda ivs: [[m.mean - max(m.low, 0.0) for m in ivs], [m.high - m.mean for m in ivs]]  # noqa: E731
        ax.errorbar([m.mean for m in x], [m.mean for m in y], xerr=err(x), yerr=err(y), fmt="o-", color=COLORS[s],
                    label=stats.LABELS[s], ms=5, lw=1.2, elinewidth=0.7, capsize=2)
        for c in mine:
            ax.annotate(f"{c.lam:g}", (c.sft_loss.mean, c.dpo_loss.mean), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = summary.front()
    ax.plot([c.sft_loss.mean for c in front], [c.dpo_loss.mean for c in front], color="black", lw=2.2, alpha=0.5,
            zorder=1, label="front over seed means")
    ax.scatter([star[0]], [star[1]], marker="*", s=250, color="black", zorder=5, label="ideal point (f*)")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_ylim(bottom=0)  # losses are never negative: no empty half below zero
    ax.set_xlabel("held-out SFT loss")
    ax.set_ylabel("held-out DPO loss")
    ax.set_title("Final losses (dots: seeds; line: mean per λ with 95 % intervals, labelled)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    width = 0.8 / len(schedules)
    x = np.arange(len(lams))
    for i, s in enumerate(schedules):
        m = [cells[(s, lam)]["ideal_distance"] for lam in lams]
        ax_d.bar(x + i * width, [v[0] for v in m], width, yerr=[v[1] for v in m], color=COLORS[s], label=stats.LABELS[s], capsize=2)
    ax_d.set_yscale("log")
    ax_d.set_xticks(x + 0.4 - width / 2, [f"λ={lam:g}" for lam in lams])
    ax_d.set_ylabel("ideal distance ‖f − f*‖ (log)")
    ax_d.set_title("Ideal distance, mean ± std over seeds")
    ax_d.grid(True, axis="y", alpha=0.3)
    ax_d.legend(fontsize=8)

    others = [s for s in schedules if s != stats.BASELINE]
    width = 0.8 / len(others)
    for i, s in enumerate(others):
        m = [cells[(s, lam)]["runtime_pct"] for lam in lams]
        ax_r.bar(x + i * width, [v[0] for v in m], width, yerr=[v[1] for v in m], color=COLORS[s], label=stats.LABELS[s], capsize=2)
    ax_r.axhline(0, color="black", lw=0.8)
    ax_r.set_xticks(x + 0.4 - width / 2, [f"λ={lam:g}" for lam in lams])
    ax_r.set_ylabel("runtime vs Sequential DPO→SFT (%)")
    ax_r.set_title("Training-loop runtime increase, mean ± std")
    ax_r.grid(True, axis="y", alpha=0.3)
    ax_r.legend(fontsize=8)

    fig.suptitle(f"Embedded default, {data['setup']['total_steps']} steps, {len(data['setup']['seeds'])} seeds", fontsize=11)
    return save(fig, "paper_comparison.png")


def save(fig, name: str):
    fig.tight_layout()
    path = RESULTS / name
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}", flush=True)
    return path


ARM_STYLE = {"grid": ("tab:gray", "s"), "grid-stop": ("tab:gray", "v"), "grid-eager": ("tab:blue", "D"),
             "adaptive": ("tab:red", "o"), "adaptive-stop": ("tab:red", "^")}


def search_figure(data: dict):
    """§6: hypervolume against optimizer steps and wall time, one panel pair per setting."""
    settings = data["settings"]
    fig, axes = plt.subplots(len(settings), 2, figsize=(12, 4.2 * len(settings)), dpi=100, squeeze=False)
    for row, (name, setting) in zip(axes, settings.items()):
        for ax, key, label in ((row[0], "optimizer_steps", "optimizer steps, all trials"), (row[1], "wall_s", "sweep wall time (s)")):
            for arm, r in setting["arms"].items():
                per_seed = list(r["hv"]["per_seed"].values())
                color, marker = ARM_STYLE[arm]
                ax.errorbar([r[key]], [np.mean(per_seed)], yerr=[np.std(per_seed, ddof=1)], fmt=marker, color=color,
                            ms=8, capsize=3, label=f"{arm} (per seed, mean ± std)")
                ax.scatter([r[key]], [r["hv"]["over_means"]], marker=marker, facecolors="none", edgecolors=color, s=90)
            ax.set_xlabel(label)
            ax.set_ylabel("hypervolume (share of the fixed box)")
            ax.set_title(f"{name}: filled = per-seed mean, hollow = over cell means", fontsize=9)
            ax.grid(True, alpha=0.3)
        row[0].legend(fontsize=7)
    return save(fig, "search.png")
