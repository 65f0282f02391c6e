"""Pure Pareto maths over finished trials: fronts, gaps, ideal distance, hypervolume.

Both losses are minimised. Non-domination and hypervolume come from ``moocore``; what is
written here is only this project's own bookkeeping around them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import moocore
import numpy as np


@dataclass(frozen=True)
class TrialResult:
    """One finished trial as the front sees it: its final held-out losses and cost."""

    trial_id: str
    schedule: str
    lam: float
    seed: int
    sft_loss: float
    dpo_loss: float
    pref_accuracy: float = math.nan
    runtime_s: float = math.nan  # wall time of the training loop (steps + evaluation)
    peak_mem_mb: float = math.nan


@dataclass(frozen=True)
class Anchors:
    """f*: the best losses reachable by training on each objective alone."""

    f_star_sft: float
    f_star_dpo: float


def front_mask(points) -> np.ndarray:
    """True for points no other point dominates. Identical points do not dominate each
    other, so ties are all kept."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(pts) == 0:
        return np.zeros(0, dtype=bool)
    return moocore.is_nondominated(pts, keep_weakly=True)


def hypervolume(points, reference) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` (points beyond it add nothing)."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    ref = np.asarray(reference, dtype=float)
    inside = pts[np.all(pts < ref, axis=1)]
    return float(moocore.hypervolume(inside, ref=ref)) if len(inside) else 0.0


def gaps(sft_loss: float, dpo_loss: float, anchors: Anchors) -> tuple[float, float, float]:
    """(f_SFT − f*_SFT, f_DPO − f*_DPO, ‖both‖₂)."""
    g_sft = sft_loss - anchors.f_star_sft
    g_dpo = dpo_loss - anchors.f_star_dpo
    return g_sft, g_dpo, math.hypot(g_sft, g_dpo)


@dataclass(frozen=True)
class Row(TrialResult):
    """A trial's line of the sweep table: its result plus what the front says of it."""

    gap_sft: float = math.nan
    gap_dpo: float = math.nan
    ideal_distance: float = math.nan
    runtime_vs_sequential_pct: float = math.nan
    on_front: bool = False
    on_schedule_front: bool = False


@dataclass
class Summary:
    rows: list[Row]
    anchors: Anchors
    reference_point: tuple[float, float]
    hypervolume: dict[str, float] = field(default_factory=dict)  # per schedule, and "all"

    def front(self, schedule: str | None = None) -> list[Row]:
        if schedule is None:
            return sorted((r for r in self.rows if r.on_front), key=lambda r: r.sft_loss)
        return sorted((r for r in self.rows if r.schedule == schedule and r.on_schedule_front), key=lambda r: r.sft_loss)

    def as_records(self) -> list[dict]:
        return [asdict(r) for r in self.rows]


def _sequential_runtime(results: list[TrialResult]) -> dict[float, float]:
    """Mean Sequential runtime per λ: the baseline of the runtime-increase column."""
    by_lam: dict[float, list[float]] = {}
    for r in results:
        if r.schedule == "sequential" and not math.isnan(r.runtime_s):
            by_lam.setdefault(r.lam, []).append(r.runtime_s)
    return {lam: float(np.mean(v)) for lam, v in by_lam.items()}


def summarize(results: list[TrialResult], anchors: Anchors, reference_point: tuple[float, float]) -> Summary:
    """Rows in a stable order (schedule, λ, seed), each with its gaps, ideal distance,
    runtime increase over Sequential at the same λ, and front membership."""
    results = sorted(results, key=lambda r: (r.schedule, r.lam, r.seed, r.trial_id))
    pts = np.array([[r.sft_loss, r.dpo_loss] for r in results], dtype=float).reshape(-1, 2)
    overall = front_mask(pts)
    per_schedule = np.zeros(len(results), dtype=bool)
    hv = {}
    for schedule in sorted({r.schedule for r in results}):
        idx = [i for i, r in enumerate(results) if r.schedule == schedule]
        per_schedule[idx] = front_mask(pts[idx])
        hv[schedule] = hypervolume(pts[idx], reference_point)
    hv["all"] = hypervolume(pts, reference_point)
    seq = _sequential_runtime(results)
    rows = []
    for i, r in enumerate(results):
        g_sft, g_dpo, dist = gaps(r.sft_loss, r.dpo_loss, anchors)
        base = seq.get(r.lam, math.nan)
        rows.append(
            Row(
                **asdict(r), gap_sft=g_sft, gap_dpo=g_dpo, ideal_distance=dist,
                runtime_vs_sequential_pct=100.0 * (r.runtime_s / base - 1.0) if base == base else math.nan,
                on_front=bool(overall[i]), on_schedule_front=bool(per_schedule[i]),
            )
        )
    return Summary(rows=rows, anchors=anchors, reference_point=tuple(reference_point), hypervolume=hv)
