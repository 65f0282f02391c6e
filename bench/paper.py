"""§1 of the benchmarks: the paper's comparison on the embedded default.

Every schedule at every λ and seed, at the same optimizer-step budget, each trial in a
fresh process, one at a time; the trials of one (λ, seed) run back to back (in a rotated
order) so that drift in the machine's speed hits every schedule alike. Then the MAXRIGHT
ablation over k at λ = 0.5.

    python -m bench.paper                      # the full comparison (about 20 min on 2 cores)
    python -m bench.paper --seeds 1 --steps 60 # a quick pass through every path
"""

from __future__ import annotations

import argparse
import time

from bench import stats
from bench.common import prepare_cache, quiet_offline, run_trial, trial_config, write_result
from workers.schedules import ALRIGHT, MAXRIGHT, MIX, SEQUENTIAL

LAMS = [0.1, 0.25, 0.5, 0.75, 0.9]
SCHEDULES = ["seq_dpo_sft", "seq_sft_dpo", MIX, ALRIGHT, MAXRIGHT]
ABLATION_KS = [1, 10, 100, 1000]
ABLATION_LAM = 0.5
DEFAULT_K = 10


def train_overrides(schedule: str, lam: float, seed: int, star=None, k: int = DEFAULT_K) -> dict:
    if schedule.startswith("seq_"):
        order = "dpo_first" if schedule == "seq_dpo_sft" else "sft_first"
        return {"schedule": SEQUENTIAL, "sequential_order": order, "lam": lam, "seed": seed}
    extra = {"f_star_sft": star[0], "f_star_dpo": star[1], "maxright_eval_every": k} if schedule == MAXRIGHT else {}
    return {"schedule": schedule, "lam": lam, "seed": seed, **extra}


class Progress:
    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def tick(self, label: str, r: dict) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[{self.done:3d}/{self.total}] {label:<34} f_SFT {r['sft_loss']:.4f}  f_DPO {r['dpo_loss']:.4f}  "
              f"acc {r['sft_accuracy']:.2f}  win {r['pref_win_rate']:.2f}  loop {r['train_s'] + r['eval_s']:5.1f}s  peak {r['peak_mem_mb']:.0f} MB   (eta {eta / 60:.1f} min)", flush=True)


def run(seeds: list[int], steps: int | None) -> dict:
    budget = {"total_steps": steps, "eval_every": max(1, steps // 12)} if steps else {}
    prepare_cache()
    extra_ks = [k for k in ABLATION_KS if k != DEFAULT_K]
    progress = Progress(len(seeds) * (2 + len(LAMS) * len(SCHEDULES) + len(extra_ks)))

    anchors = []
    for seed in seeds:
        for objective, lam in (("sft", 0.0), ("dpo", 1.0)):
            r = run_trial(trial_config(**train_overrides("seq_dpo_sft", lam, seed), **budget))
            anchors.append({"objective": objective, "seed": seed, **r})
            progress.tick(f"anchor {objective}-only seed {seed}", r)
    star = stats.f_star(anchors)
    print(f"f*_SFT = {star[0]:.4f}, f*_DPO = {star[1]:.4f} (mean over seeds of each anchor trial's best)", flush=True)

    trials, group = [], 0
    for seed in seeds:
        for lam in LAMS:
            order = SCHEDULES[group % len(SCHEDULES):] + SCHEDULES[: group % len(SCHEDULES)]
            group += 1
            for schedule in order:
                r = run_trial(trial_config(**train_overrides(schedule, lam, seed, star), **budget))
                trials.append({"schedule": schedule, "lam": lam, "seed": seed, "k": DEFAULT_K, **r})
                progress.tick(f"{schedule} λ={lam:g} seed {seed}", r)

    ablation = [dict(t) for t in trials if t["schedule"] == MAXRIGHT and t["lam"] == ABLATION_LAM]
    for seed in seeds:
        for k in extra_ks:
            r = run_trial(trial_config(**train_overrides(MAXRIGHT, ABLATION_LAM, seed, star, k), **budget))
            ablation.append({"schedule": MAXRIGHT, "lam": ABLATION_LAM, "seed": seed, "k": k, **r})
            progress.tick(f"maxright k={k} λ={ABLATION_LAM:g} seed {seed}", r)
    baselines = [t for t in trials if t["schedule"] == stats.BASELINE and t["lam"] == ABLATION_LAM]
    return {
        "setup": {"lams": LAMS, "schedules": SCHEDULES, "seeds": seeds, "ablation_ks": ABLATION_KS,
                  "ablation_lam": ABLATION_LAM, "total_steps": trial_config()["train"]["total_steps"] if not steps else steps},
        "f_star": list(star), "anchors": anchors, "trials": trials, "ablation": ablation + baselines,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per cell (default 3)")
    ap.add_argument("--steps", type=int, help="override the preset's 600 steps (for a quick pass)")
    args = ap.parse_args()
    quiet_offline()
    data = run(list(range(args.seeds)), args.steps)
    command = f"python -m bench.paper --seeds {args.seeds}" + (f" --steps {args.steps}" if args.steps else "")
    write_result("paper_comparison", data, command)
    from bench.figures import paper_figure

    paper_figure(data)


if __name__ == "__main__":
    main()
