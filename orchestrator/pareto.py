"""Pure Pareto maths over finished trials: seed means with intervals, fronts, gaps,
ideal distance, hypervolume.

Two fronts: the loss front (both held-out losses, minimised) and the behaviour front
(greedy generations' SFT accuracy and preference win rate, both in [0, 1], maximised). Non-domination and hypervolume come from ``moocore``, the
t quantile from ``scipy``; what is written here is only this project's own bookkeeping.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import moocore
import numpy as np

from workers import metrics
from workers.schedules import SEQUENTIAL


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
    sft_accuracy: float = math.nan  # gen/: the behaviour of the final model
    pref_win_rate: float = math.nan
    runtime_s: float = math.nan  # wall time of the training loop (steps + evaluation)
    gen_s: float = math.nan  # of it, generating and judging
    peak_mem_mb: float = math.nan


@dataclass(frozen=True)
class Anchors:
    """f*: the best losses reachable by training on each objective alone."""

    f_star_sft: float
    f_star_dpo: float


def trial_result(trial_id: str, schedule: str, lam: float, seed: int, trajectory: list[dict]) -> TrialResult:
    """A finished trial's result: its last evaluation point."""
    last = trajectory[-1]
    return TrialResult(
        trial_id=trial_id, schedule=schedule, lam=float(lam), seed=int(seed),
        sft_loss=float(last[metrics.SFT_LOSS]), dpo_loss=float(last[metrics.DPO_LOSS]),
        pref_accuracy=float(last.get(metrics.PREF_ACCURACY, math.nan)),
        sft_accuracy=float(last.get(metrics.GEN_SFT_ACCURACY, math.nan)),
        pref_win_rate=float(last.get(metrics.GEN_PREF_WIN_RATE, math.nan)),
        runtime_s=float(last.get(metrics.TRAIN_S, math.nan)) + float(last.get(metrics.EVAL_S, math.nan)),
        gen_s=float(last.get(metrics.GEN_S, math.nan)),
        peak_mem_mb=float(last.get(metrics.PEAK_MEM_MB, math.nan)),
    )


def initial_point(trajectories: list[list[dict]]) -> tuple[float, float]:
    """The initial model's losses (every trial starts from the same base, so any step-0
    point; the worst of them if they differ by float noise)."""
    starts = [t[0] for t in trajectories if t and int(t[0][metrics.STEP]) == 0]
    return (max(p[metrics.SFT_LOSS] for p in starts), max(p[metrics.DPO_LOSS] for p in starts))


def behaviour(points: list[dict]) -> tuple[float, float]:
    """Mean (SFT accuracy, preference win rate) over the given points (NaN where none has it)."""
    def mean(key):
        values = [p[key] for p in points if key in p]
        return float(np.mean(values)) if values else math.nan

    return mean(metrics.GEN_SFT_ACCURACY), mean(metrics.GEN_PREF_WIN_RATE)


def initial_behaviour(trajectories: list[list[dict]]) -> tuple[float, float]:
    """The initial model's behaviour: the mean of the step-0 points (the same base model
    and prompts in every trial)."""
    return behaviour([t[0] for t in trajectories if t and int(t[0][metrics.STEP]) == 0])


def anchor_behaviour(anchor_trials: list[tuple[str, list[dict]]]) -> dict[str, tuple[float, float]]:
    """Per objective, the mean behaviour of the anchor trials' final models."""
    return {k: behaviour([t[-1] for objective, t in anchor_trials if objective == k and t])
            for k in metrics.OBJECTIVES if any(objective == k for objective, _ in anchor_trials)}


def best_loss(objective: str, trajectory: list[dict]) -> float:
    """The best held-out loss one single-objective trial reached at any evaluation."""
    return min(p[metrics.eval_loss(objective)] for p in trajectory)


def f_star(values: list[float]) -> float:
    """f* of one objective: the mean over anchor seeds of each seed's best held-out loss.
    Each best is picked on the held-out set it is scored on, so f* is a little optimistic;
    the mean keeps one lucky seed from deciding it."""
    return sum(values) / len(values)


def anchors_from_trajectories(sft_only: list[list[dict]], dpo_only: list[list[dict]]) -> Anchors:
    """f* from the SFT-only and DPO-only trials of every anchor seed."""
    return Anchors(f_star_sft=f_star([best_loss("sft", t) for t in sft_only]),
                   f_star_dpo=f_star([best_loss("dpo", t) for t in dpo_only]))


def finished_anchors(anchor_trials: list[tuple[str, list[dict]]]) -> Anchors | None:
    """f* from the (objective, trajectory) of the anchor trials that finished (every
    seed's); None unless both objectives have one."""
    by_objective: dict[str, list[list[dict]]] = {k: [] for k in metrics.OBJECTIVES}
    for objective, trajectory in anchor_trials:
        by_objective[objective].append(trajectory)
    if not all(by_objective.values()):
        return None
    return anchors_from_trajectories(by_objective["sft"], by_objective["dpo"])


def front_mask(points) -> np.ndarray:
    """True for points no other point dominates. Identical points do not dominate each
    other, so ties are all kept."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(pts) == 0:
        return np.zeros(0, dtype=bool)
    return moocore.is_nondominated(pts, keep_weakly=True)


def behaviour_front_mask(points) -> np.ndarray:
    """True for (accuracy, win rate) points no other point dominates, both maximised; a
    point with a NaN rate is on no front."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    known = ~np.isnan(pts).any(axis=1)
    out = np.zeros(len(pts), dtype=bool)
    if known.any():
        out[known] = moocore.is_nondominated(pts[known], maximise=True, keep_weakly=True)
    return out


def behaviour_hypervolume(points) -> float:
    """Area of [0, 1]² that (accuracy, win rate) points dominate, both maximised from the
    reference point (0, 0): already a share, comparable between any two sweeps."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    inside = pts[~np.isnan(pts).any(axis=1) & np.all(pts > 0, axis=1)]
    return float(moocore.hypervolume(inside, ref=[0.0, 0.0], maximise=True)) if len(inside) else 0.0


def hypervolume(points, reference) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` (points beyond it add nothing)."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    ref = np.asarray(reference, dtype=float)
    inside = pts[np.all(pts < ref, axis=1)]
    return float(moocore.hypervolume(inside, ref=ref)) if len(inside) else 0.0


def gaps(sft_loss: float, dpo_loss: float, anchors: Anchors | None) -> tuple[float, float, float]:
    """(f_SFT − f*_SFT, f_DPO − f*_DPO, ‖both‖₂); NaN without f*."""
    if anchors is None:
        return math.nan, math.nan, math.nan
    g_sft = sft_loss - anchors.f_star_sft
    g_dpo = dpo_loss - anchors.f_star_dpo
    return g_sft, g_dpo, math.hypot(g_sft, g_dpo)


@dataclass(frozen=True)
class Interval:
    """A mean over seeds and its 95 % confidence interval (Student's t); no interval from
    one seed (low and high are NaN)."""

    mean: float
    low: float = math.nan
    high: float = math.nan

    @property
    def known(self) -> bool:
        return not math.isnan(self.low)


def interval95(values) -> Interval:
    from scipy import stats

    v = np.asarray(list(values), dtype=float)
    if len(v) < 2:
        return Interval(float(v.mean()))
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return Interval(float(v.mean()), float(v.mean()) - half, float(v.mean()) + half)


@dataclass(frozen=True)
class Row(TrialResult):
    """A trial's line of the sweep table (every seed): its result, gaps and cost."""

    gap_sft: float = math.nan
    gap_dpo: float = math.nan
    ideal_distance: float = math.nan
    runtime_vs_sequential_pct: float = math.nan


@dataclass(frozen=True)
class Cell:
    """One (schedule, λ) over its seeds: what the front is built from."""

    schedule: str
    lam: float
    seeds: tuple[int, ...]
    sft_loss: Interval
    dpo_loss: Interval
    gap_sft: Interval
    gap_dpo: Interval
    ideal_distance: Interval
    sft_accuracy: Interval
    pref_win_rate: Interval
    pref_accuracy: float
    runtime_s: float
    runtime_vs_sequential_pct: float
    on_front: bool = False  # over the means of every cell
    on_schedule_front: bool = False  # over the means of this schedule's cells
    # Dominated, but only within noise: its 95 % box overlaps the box of a cell whose means
    # dominate it, so the seeds do not show it is off the front. None: one seed, no box.
    not_separable: bool | None = None
    on_behaviour_front: bool = False  # over the means of (accuracy, win rate) of every cell


@dataclass
class Summary:
    rows: list[Row]
    cells: list[Cell]
    anchors: Anchors | None
    initial_point: tuple[float, float]
    reference_point: tuple[float, float]  # of the hypervolume
    reference_rule: str  # how the reference point was chosen, printed beside every hypervolume
    hypervolume: dict[str, float] = field(default_factory=dict)  # per schedule and "all", over cell means, normalised
    numerics: dict[str, str] = field(default_factory=dict)  # what the numbers depend on besides the config
    behaviour_hypervolume: dict[str, float] = field(default_factory=dict)  # per schedule and "all", share of [0, 1]²
    initial_behaviour: tuple[float, float] = (math.nan, math.nan)  # (accuracy, win rate) of the initial model
    anchor_behaviour: dict[str, tuple[float, float]] = field(default_factory=dict)  # objective -> its anchors' mean

    def front(self, schedule: str | None = None) -> list[Cell]:
        if schedule is None:
            return sorted((c for c in self.cells if c.on_front), key=lambda c: c.sft_loss.mean)
        return sorted((c for c in self.cells if c.schedule == schedule and c.on_schedule_front), key=lambda c: c.sft_loss.mean)

    def behaviour_front(self) -> list[Cell]:
        return sorted((c for c in self.cells if c.on_behaviour_front), key=lambda c: c.sft_accuracy.mean)

    def as_records(self) -> list[dict]:
        return [asdict(r) for r in self.rows]


REFERENCE_MARGIN = 1.1


def hypervolume_reference(points, initial_point: tuple[float, float], given: tuple[float, float] | None = None):
    """(reference point, how it was chosen). The initial model's DPO loss is exactly ln 2
    (policy = reference), so a reference there gave every trial ending above ln 2 — every
    Sequential trial — a hypervolume of 0. The default is the nadir of every trial and the
    initial model, times 1.1: every trial improves on it, and it only moves as far as the
    worst trial does. ``given`` (``sweep.hypervolume_reference``) fixes it across sweeps."""
    if given is not None:
        return (float(given[0]), float(given[1])), "sweep.hypervolume_reference"
    pts = np.vstack([np.asarray(points, dtype=float).reshape(-1, 2), np.asarray([initial_point], dtype=float)])
    nadir = pts.max(axis=0)
    return (float(nadir[0] * REFERENCE_MARGIN), float(nadir[1] * REFERENCE_MARGIN)), \
        f"{REFERENCE_MARGIN:g} × the nadir of the trials and the initial model"


def normalised_hypervolume(points, reference: tuple[float, float]) -> float:
    """The share of the box from (0, 0) — both losses are ≥ 0 — to the reference point that
    ``points`` dominate: in [0, 1], and comparable between sweeps with the same reference."""
    area = reference[0] * reference[1]
    return hypervolume(points, reference) / area if area > 0 else math.nan


def _sequential_runtime(results: list[TrialResult]) -> dict[float, float]:
    """Mean Sequential runtime per λ: the baseline of the runtime-increase column."""
    by_lam: dict[float, list[float]] = {}
    for r in results:
        if r.schedule == SEQUENTIAL and not math.isnan(r.runtime_s):
            by_lam.setdefault(r.lam, []).append(r.runtime_s)
    return {lam: float(np.mean(v)) for lam, v in by_lam.items()}


def _pct(value: float, base: float) -> float:
    return 100.0 * (value / base - 1.0) if base == base else math.nan


def _dominates(d: dict, c: dict) -> bool:
    a, b = (d["sft_loss"].mean, d["dpo_loss"].mean), (c["sft_loss"].mean, c["dpo_loss"].mean)
    return a[0] <= b[0] and a[1] <= b[1] and a != b


def _not_separable(cells: list[dict], overall: np.ndarray) -> list[bool | None]:
    """Per cell: False on the front; for a dominated cell, whether its box overlaps the box
    of a cell whose means dominate it (in both coordinates the dominating cell's upper bound
    reaches its lower bound); None without a box (one seed)."""
    out: list[bool | None] = []
    for i, c in enumerate(cells):
        if overall[i]:
            out.append(False)
        elif not (c["sft_loss"].known and c["dpo_loss"].known):
            out.append(None)
        else:
            out.append(any(_dominates(d, c) and d["sft_loss"].high >= c["sft_loss"].low
                           and d["dpo_loss"].high >= c["dpo_loss"].low for d in cells))
    return out


def summarize(results: list[TrialResult], anchors: Anchors | None, initial_point: tuple[float, float],
              reference: tuple[float, float] | None = None, numerics: dict[str, str] | None = None,
              initial_behaviour: tuple[float, float] = (math.nan, math.nan),
              anchor_behaviour: dict[str, tuple[float, float]] | None = None) -> Summary:
    """Every trial as a row (stable order: schedule, λ, seed), and per (schedule, λ) a cell
    of seed means with 95 % intervals; fronts and hypervolumes (of losses and of behaviour)
    are over the cell means, so no single seed decides them."""
    results = sorted(results, key=lambda r: (r.schedule, r.lam, r.seed, r.trial_id))
    seq = _sequential_runtime(results)
    rows = []
    for r in results:
        g_sft, g_dpo, dist = gaps(r.sft_loss, r.dpo_loss, anchors)
        rows.append(Row(**asdict(r), gap_sft=g_sft, gap_dpo=g_dpo, ideal_distance=dist,
                        runtime_vs_sequential_pct=_pct(r.runtime_s, seq.get(r.lam, math.nan))))
    groups: dict[tuple[str, float], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.schedule, r.lam), []).append(r)
    cells = []
    for (schedule, lam), rs in groups.items():
        runtime = float(np.mean([r.runtime_s for r in rs]))
        cells.append({
            "schedule": schedule, "lam": lam, "seeds": tuple(r.seed for r in rs),
            **{k: interval95(getattr(r, k) for r in rs)
               for k in ("sft_loss", "dpo_loss", "gap_sft", "gap_dpo", "ideal_distance", "sft_accuracy", "pref_win_rate")},
            "pref_accuracy": float(np.mean([r.pref_accuracy for r in rs])), "runtime_s": runtime,
            "runtime_vs_sequential_pct": _pct(runtime, seq.get(lam, math.nan)),
        })
    means = np.array([[c["sft_loss"].mean, c["dpo_loss"].mean] for c in cells], dtype=float).reshape(-1, 2)
    overall = front_mask(means)
    per_schedule = np.zeros(len(cells), dtype=bool)
    ref, rule = hypervolume_reference([[r.sft_loss, r.dpo_loss] for r in rows], initial_point, reference)
    hv = {}
    for schedule in sorted({c["schedule"] for c in cells}):
        idx = [i for i, c in enumerate(cells) if c["schedule"] == schedule]
        per_schedule[idx] = front_mask(means[idx])
        hv[schedule] = normalised_hypervolume(means[idx], ref)
    hv["all"] = normalised_hypervolume(means, ref)
    rates = np.array([[c["sft_accuracy"].mean, c["pref_win_rate"].mean] for c in cells], dtype=float).reshape(-1, 2)
    on_behaviour = behaviour_front_mask(rates)
    behaviour_hv = {s: behaviour_hypervolume(rates[[c["schedule"] == s for c in cells]]) for s in hv if s != "all"}
    behaviour_hv["all"] = behaviour_hypervolume(rates)
    flags = _not_separable(cells, overall)
    cells = [Cell(**c, on_front=bool(overall[i]), on_schedule_front=bool(per_schedule[i]), not_separable=flags[i],
                  on_behaviour_front=bool(on_behaviour[i])) for i, c in enumerate(cells)]
    return Summary(rows=rows, cells=cells, anchors=anchors, initial_point=tuple(initial_point), reference_point=ref,
                   reference_rule=rule, hypervolume=hv, numerics=dict(numerics or {}),
                   behaviour_hypervolume=behaviour_hv if (~np.isnan(rates).any(axis=1)).any() else {},
                   initial_behaviour=tuple(initial_behaviour), anchor_behaviour=dict(anchor_behaviour or {}))
