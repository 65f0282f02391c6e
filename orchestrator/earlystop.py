"""Pareto-aware early stopping, pure (no Ray; ``orchestrator.search`` wraps it as a Tune
scheduler).

A trial is beaten at an evaluation step when another trial of the same seed had, at that
same step, both held-out losses lower by a factor (1+ε). After ``grace`` optimizer steps,
a trial beaten at ``patience`` evaluations in a row is stopped, and with it its cell (its
other seeds): the front is over seed means, and a cell missing a seed would be judged on
its luckier ones. Anchors are never stopped (they are f*), nor the ``protect``ed schedules
(Sequential by default: its trajectory is phase-shaped, far from its end point halfway).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.schedules import SEQUENTIAL


@dataclass(frozen=True)
class Rule:
    grace: int  # optimizer steps before any stop
    epsilon: float
    patience: int  # evaluations beaten in a row
    protect: tuple[str, ...] = (SEQUENTIAL,)


def beats(other: tuple[float, float], mine: tuple[float, float], epsilon: float) -> bool:
    return other[0] * (1 + epsilon) < mine[0] and other[1] * (1 + epsilon) < mine[1]


@dataclass(frozen=True)
class Stop:
    label: str
    cell: tuple[str, float]
    step: int
    by: str  # the trial that beat it last, or "its cell" for a sibling seed


@dataclass
class Dominance:
    """The curves seen so far and each trial's run of evaluations beaten."""

    rule: Rule
    curves: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)
    strikes: dict[str, int] = field(default_factory=dict)
    stopped_cells: dict[tuple[str, float], Stop] = field(default_factory=dict)

    def record(self, label: str, seed: int, step: int, point: tuple[float, float]) -> None:
        """An evaluation to compare against, judging nothing (an earlier run's, on resume)."""
        self.curves.setdefault(label, {})[step] = point
        self.seeds[label] = seed

    def observe(self, label: str, schedule: str, lam: float, seed: int, protected: bool, step: int,
                point: tuple[float, float]) -> Stop | None:
        """Record one evaluation; a Stop when the trial must end here."""
        self.record(label, seed, step, point)
        cell = (schedule, lam)
        if protected or schedule in self.rule.protect:
            return None
        if cell in self.stopped_cells:
            return Stop(label, cell, step, "its cell")
        if step < self.rule.grace:
            return None
        winner = next((other for other, curve in self.curves.items()
                       if other != label and self.seeds[other] == seed and step in curve
                       and beats(curve[step], point, self.rule.epsilon)), None)
        self.strikes[label] = self.strikes.get(label, 0) + 1 if winner else 0
        if winner is None or self.strikes[label] < self.rule.patience:
            return None
        stop = Stop(label, cell, step, winner)
        self.stopped_cells[cell] = stop
        return stop
