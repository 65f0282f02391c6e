"""The early stopping's rule replayed on a finished grid's trajectories, without training:
for each rule, the trials it stops, the optimizer steps and seconds of training loop (steps
and evaluation, each trial's own clock up to where it stops) it spends, and the hypervolume
per seed it keeps, against the same grid run to the end (§6).

The trials are replayed one at a time, in the order the sweep starts them, each judged
(``orchestrator.earlystop.Dominance``, the sweep's own rule) against the whole curves of the
trials before it: a sweep with one slot. With two slots a cell's next seed can run beside
the first before the first is stopped, so a real sweep spends a little more than this.

    python -m bench.stop_replay [setting ...]   # the grid arm of the last python -m bench.search
"""

from __future__ import annotations

import statistics
import sys

from bench.common import WORK, quiet_offline, write_result
from bench.search import ARMS, SEEDS, SETTINGS, boxes
from orchestrator.config import EarlyStop
from workers.schedules import SEQUENTIAL

EPSILON = EarlyStop().epsilon  # the default
# (grace as a share of the steps, patience, protected schedules)
RULES = [(share, patience, protect) for protect in ((SEQUENTIAL,), ()) for share in (1 / 4, 1 / 6) for patience in (2, 1)]


def replay(trials: list, total: int, grace: int, patience: int, protect: tuple[str, ...]) -> dict:
    """``trials``: (point, finished trajectory) in the sweep's start order; ``total``: their steps."""
    from orchestrator.earlystop import Dominance, Rule
    from workers import metrics

    dominance = Dominance(Rule(grace, EPSILON, patience, protect))
    spent, seconds, stopped, ends = 0, 0.0, {}, []
    for p, trajectory in trials:
        for row in trajectory:
            step, point = int(row[metrics.STEP]), (row[metrics.SFT_LOSS], row[metrics.DPO_LOSS])
            if dominance.observe(p.label, p.schedule, p.lam, p.seed, p.is_anchor, step, point) and step < total:
                stopped[p.label] = step
                break
        spent += step
        seconds += float(row.get(metrics.TRAIN_S, 0.0)) + float(row.get(metrics.EVAL_S, 0.0))  # the trial's clock so far
        if not p.is_anchor:
            ends.append({"schedule": p.schedule, "lam": p.lam, "seed": p.seed, "sft": point[0], "dpo": point[1],
                         "stopped": p.label in stopped})
    return {"spent": spent, "loop_s": seconds, "stopped": stopped, "ends": ends}


def replay_setting(setting: str, name: str) -> dict:
    """Every rule of ``RULES`` on the grid sweep ``name`` of ``setting``, against that grid."""
    from orchestrator import resume
    from orchestrator.config import load_config
    from orchestrator.pareto import initial_point, normalised_hypervolume

    preset, overrides, _ = SETTINGS[setting]
    storage = WORK / "sweeps" / name
    cfg = load_config(preset, [f"storage={storage}", f"name={name}", *overrides, f"sweep.seeds={SEEDS}", *ARMS["grid"]])
    sweep_dir, total = storage / name, cfg.trial.train.total_steps
    trials = [(p, resume.finished_trajectory(sweep_dir, p.label)) for p in resume.sweep_points_on_storage(cfg, sweep_dir)]
    full = replay(trials, total, 0, 1, tuple(cfg.sweep.schedules))  # every schedule protected: the grid as it ran
    reference = boxes({"grid": {"points": full["ends"]}}, initial_point([t for _, t in trials]))["nadir"]

    def hv(ends, seed):
        return normalised_hypervolume([(e["sft"], e["dpo"]) for e in ends if e["seed"] == seed and not e["stopped"]],
                                      reference)

    rows = []
    for share, patience, protect in RULES:
        grace = int(total * share)
        r = replay(trials, total, grace, patience, protect)
        per_seed = [hv(r["ends"], s) / hv(full["ends"], s) for s in SEEDS]
        rows.append({"grace": grace, "patience": patience, "protect": list(protect), "stopped": len(r["stopped"]),
                     "optimizer_steps": r["spent"] / full["spent"], "loop_s": r["loop_s"] / full["loop_s"],
                     "hypervolume_per_seed": per_seed,
                     "hypervolume": statistics.mean(per_seed)})
        print(f"{setting}: grace {grace}, patience {patience}, protect {list(protect)}: {len(r['stopped'])} stopped, "
              f"optimizer steps ×{rows[-1]['optimizer_steps']:.3f}, loop seconds ×{rows[-1]['loop_s']:.3f}, hypervolume ×{rows[-1]['hypervolume']:.4f} per seed",
              flush=True)
    return {"sweep": name, "epsilon": EPSILON, "reference": reference, "rules": rows}


def main() -> None:
    quiet_offline()
    names = sys.argv[1:] or list(SETTINGS)
    write_result("stop_replay", {"settings": {setting: replay_setting(setting, f"search-{setting}-grid") for setting in names}},
                 " ".join(["python -m bench.stop_replay", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
