"""Config -> the trials of a sweep: pure, no Ray (the driver wraps the lists for Tune)."""

from __future__ import annotations

from itertools import product

from orchestrator.pareto import Anchors
from workers.config import TrialConfig


def anchor_points(seeds: list[int]) -> list[dict]:
    """SFT alone and DPO alone, with the sweep's budget (Sequential at λ = 0 and λ = 1), for
    every seed of the sweep: f* from one seed would carry that seed's luck into every gap."""
    return [
        point
        for seed in seeds
        for point in (
            {"stage": "anchor", "objective": "sft", "schedule": "sequential", "lam": 0.0, "seed": seed},
            {"stage": "anchor", "objective": "dpo", "schedule": "sequential", "lam": 1.0, "seed": seed},
        )
    ]


def main_points(schedules: list[str], lams: list[float], seeds: list[int]) -> list[dict]:
    """The schedule × λ × seed grid, in a stable order."""
    return [
        {"stage": "main", "schedule": s, "lam": lam, "seed": seed}
        for s, lam, seed in product(schedules, lams, seeds)
    ]


def apply_point(trial: TrialConfig, point: dict, anchors: Anchors | None, per_schedule: dict | None = None) -> TrialConfig:
    """The trial config of one grid point, revalidated (f* only matters to MAXRIGHT);
    ``per_schedule`` holds the train fields that differ by schedule (``sweep.per_schedule``)."""
    raw = trial.model_dump()
    raw["train"].update((per_schedule or {}).get(point["schedule"], {}))
    raw["train"].update(schedule=point["schedule"], lam=point["lam"], seed=point["seed"])
    if anchors is not None:
        raw["train"].update(f_star_sft=anchors.f_star_sft, f_star_dpo=anchors.f_star_dpo)
    return TrialConfig.model_validate(raw)


def trial_label(point: dict) -> str:
    """A short human name for progress tables and MLflow run names."""
    if point["stage"] == "anchor":
        return f"anchor-{point['objective']}-seed{point['seed']}"
    return f"{point['schedule']}-lam{point['lam']:g}-seed{point['seed']}"


def best_loss(objective: str, trajectory: list[dict]) -> float:
    """The best held-out loss one single-objective trial reached at any evaluation."""
    return min(p[f"eval/{objective}_loss"] for p in trajectory)


def f_star(values: list[float]) -> float:
    """f* of one objective: the mean over anchor seeds of each seed's best held-out loss.
    Each best is picked on the held-out set it is scored on, so f* is a little optimistic;
    the mean keeps one lucky seed from deciding it."""
    return sum(values) / len(values)


def anchors_from_trajectories(sft_only: list[list[dict]], dpo_only: list[list[dict]]) -> Anchors:
    """f* from the SFT-only and DPO-only trials of every anchor seed."""
    return Anchors(f_star_sft=f_star([best_loss("sft", t) for t in sft_only]),
                   f_star_dpo=f_star([best_loss("dpo", t) for t in dpo_only]))


def sweep_points(schedules: list[str], lams: list[float], seeds: list[int], with_anchors: bool) -> list[dict]:
    """Every trial of a sweep in the order Tune starts them: the anchors first, MAXRIGHT
    last (its trials wait for the anchors' f*; the others need none)."""
    main = sorted(main_points(schedules, lams, seeds), key=lambda p: p["schedule"] == "maxright")
    return (anchor_points(seeds) if with_anchors else []) + main
