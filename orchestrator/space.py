"""Config -> the trials of a sweep: pure, no Ray (the driver wraps the lists for Tune)."""

from __future__ import annotations

from itertools import product

from orchestrator.pareto import Anchors
from workers.config import TrialConfig


def anchor_points(seed: int) -> list[dict]:
    """SFT alone and DPO alone, with the sweep's budget: Sequential at λ = 0 and λ = 1."""
    return [
        {"stage": "anchor", "objective": "sft", "schedule": "sequential", "lam": 0.0, "seed": seed},
        {"stage": "anchor", "objective": "dpo", "schedule": "sequential", "lam": 1.0, "seed": seed},
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


def anchors_from_trajectories(sft_only: list[dict], dpo_only: list[dict]) -> Anchors:
    """f* = the best held-out loss each single-objective trial reached at any evaluation."""
    return Anchors(
        f_star_sft=min(p["eval/sft_loss"] for p in sft_only),
        f_star_dpo=min(p["eval/dpo_loss"] for p in dpo_only),
    )
