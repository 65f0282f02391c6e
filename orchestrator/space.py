"""Config -> the trials of a sweep: pure, no Ray (the driver wraps the points for Tune)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product
from typing import Literal

from orchestrator.pareto import Anchors
from workers.config import TrialConfig
from workers.schedules import MAXRIGHT, SEQUENTIAL


@dataclass(frozen=True)
class Point:
    """One trial of a sweep. Tune carries it as ``as_dict()`` (plain JSON in its
    ``params.json``, read back without unpickling) and hands it back through ``from_dict``."""

    stage: Literal["anchor", "main"]
    schedule: str
    lam: float
    seed: int
    objective: str | None = None  # an anchor's one objective

    @property
    def is_anchor(self) -> bool:
        return self.stage == "anchor"

    @property
    def waits_for_anchors(self) -> bool:
        """MAXRIGHT needs f*, which the anchor trials estimate."""
        return self.schedule == MAXRIGHT

    @property
    def label(self) -> str:
        """A short human name: progress tables, storage folders, MLflow runs."""
        if self.is_anchor:
            return f"anchor-{self.objective}-seed{self.seed}"
        return f"{self.schedule}-lam{self.lam:g}-seed{self.seed}"

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Point":
        return cls(**d)


def anchor_points(seeds: list[int]) -> list[Point]:
    """SFT alone and DPO alone, with the sweep's budget (Sequential at λ = 0 and λ = 1), for
    every seed of the sweep: f* from one seed would carry that seed's luck into every gap."""
    return [Point("anchor", SEQUENTIAL, lam, seed, objective) for seed in seeds for objective, lam in (("sft", 0.0), ("dpo", 1.0))]


def main_points(schedules: list[str], lams: list[float], seeds: list[int]) -> list[Point]:
    """The schedule × λ × seed grid, in a stable order."""
    return [Point("main", s, lam, seed) for s, lam, seed in product(schedules, lams, seeds)]


def sweep_points(schedules: list[str], lams: list[float], seeds: list[int], with_anchors: bool) -> list[Point]:
    """Every trial of a sweep in the order Tune starts them: the anchors first, MAXRIGHT
    last (its trials wait for the anchors' f*; the others need none), and within each, every
    cell's first seed before any cell's second: the early stopping has judged a cell on its
    first seed before its others start, and stops them before they train at all."""
    rank = {seed: i for i, seed in enumerate(seeds)}
    main = sorted(main_points(schedules, lams, seeds), key=lambda p: (p.waits_for_anchors, rank[p.seed]))
    return (anchor_points(seeds) if with_anchors else []) + main


def apply_point(trial: TrialConfig, point: Point, anchors: Anchors | None, per_schedule: dict | None = None) -> TrialConfig:
    """The trial config of one grid point, revalidated (f* only matters to MAXRIGHT);
    ``per_schedule`` holds the train fields that differ by schedule (``sweep.per_schedule``)."""
    raw = trial.model_dump()
    raw["train"].update((per_schedule or {}).get(point.schedule, {}))
    raw["train"].update(schedule=point.schedule, lam=point.lam, seed=point.seed)
    if anchors is not None:
        raw["train"].update(f_star_sft=anchors.f_star_sft, f_star_dpo=anchors.f_star_dpo)
    return TrialConfig.model_validate(raw)
