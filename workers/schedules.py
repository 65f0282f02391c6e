"""Which objective(s) get a gradient at each optimizer step: pure, Ray-free, resumable.

Every schedule is deterministic given its constructor arguments and the losses it has
been shown, so every DDP rank that builds it with the same arguments (and is shown the
same, all-reduced, losses) takes the same decision at the same step. That matters: a rank
that stepped SFT while another stepped DPO would all-reduce gradients of different
objectives, or hang when their backward passes differ.

Contract: call ``plan(step)`` once per step, in order. MAXRIGHT also wants ``observe``
after each update, and both objectives' scores before the steps where ``wants_scores``
says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# The schedule names, spelled here only: the configs, the CLI and the plot colours take them.
SEQUENTIAL, MIX, ALRIGHT, MAXRIGHT = "sequential", "mix", "alright", "maxright"
SCHEDULES = (SEQUENTIAL, MIX, ALRIGHT, MAXRIGHT)


@dataclass(frozen=True)
class Plan:
    """Weights on each objective this step; 0 means that objective is not computed."""

    sft_weight: float
    dpo_weight: float


SFT_STEP = Plan(sft_weight=1.0, dpo_weight=0.0)
DPO_STEP = Plan(sft_weight=0.0, dpo_weight=1.0)


class Schedule:
    """Base: stateless schedules need no scores and have nothing to checkpoint."""

    name: str = ""
    observes: bool = False

    def __init__(self, lam: float, total_steps: int):
        self.lam = lam
        self.total_steps = total_steps

    def plan(self, step: int) -> Plan:
        raise NotImplementedError

    def wants_scores(self, step: int) -> bool:
        return False

    def observe(self, sft: float | None = None, dpo: float | None = None) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Sequential(Schedule):
    """One objective for a first stage, the other for the rest.

    By default the DPO stage is ``round(λ·T)`` steps, so λ is the share of DPO updates as
    in the other schedules. ``switch_step`` overrides it (the paper's explicit
    ``(T_first, T_second)`` epochs, converted to steps by the caller).
    """

    name = SEQUENTIAL

    def __init__(self, lam: float, total_steps: int, order: str = "dpo_first", switch_step: int | None = None):
        super().__init__(lam, total_steps)
        if order not in ("dpo_first", "sft_first"):
            raise ValueError(f"order must be 'dpo_first' or 'sft_first', got {order!r}")
        dpo_steps = round(lam * total_steps)
        if switch_step is None:
            switch_step = dpo_steps if order == "dpo_first" else total_steps - dpo_steps
        self.order = order
        self.switch_step = switch_step
        self._first, self._second = (DPO_STEP, SFT_STEP) if order == "dpo_first" else (SFT_STEP, DPO_STEP)

    def plan(self, step: int) -> Plan:
        return self._first if step < self.switch_step else self._second


class Mix(Schedule):
    """Both objectives every step, weighted ``1−λ`` (SFT) and ``λ`` (DPO)."""

    name = MIX

    def plan(self, step: int) -> Plan:
        return Plan(sft_weight=1.0 - self.lam, dpo_weight=self.lam)


class Alright(Schedule):
    """A DPO step with probability λ, else an SFT step.

    The draws come from a dedicated generator seeded the same on every rank, never from
    the global RNG that data shuffling or dropout might also consume.
    """

    name = ALRIGHT

    def __init__(self, lam: float, total_steps: int, seed: int = 0):
        super().__init__(lam, total_steps)
        self._rng = np.random.default_rng(seed)

    def plan(self, step: int) -> Plan:
        return DPO_STEP if self._rng.random() < self.lam else SFT_STEP

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]


class Maxright(Schedule):
    """Step the objective with the larger weighted gap to its optimum.

    DPO when ``λ·(f_DPO − f*_DPO) > (1−λ)·(f_SFT − f*_SFT)``, ties to SFT. The scores are
    stale between refreshes: the stepped objective's score is updated from its own
    training loss after each update, and both are recomputed every ``eval_every`` steps.
    """

    name = MAXRIGHT
    observes = True

    def __init__(
        self,
        lam: float,
        total_steps: int,
        f_star_sft: float,
        f_star_dpo: float,
        eval_every: int = 10,
    ):
        super().__init__(lam, total_steps)
        if eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {eval_every}")
        self.f_star_sft = f_star_sft
        self.f_star_dpo = f_star_dpo
        self.eval_every = eval_every
        self.sft_score: float | None = None
        self.dpo_score: float | None = None

    def wants_scores(self, step: int) -> bool:
        return step % self.eval_every == 0

    def plan(self, step: int) -> Plan:
        if self.sft_score is None or self.dpo_score is None:
            raise RuntimeError("Maxright.plan called before both scores were observed")
        dpo_gap = self.lam * (self.dpo_score - self.f_star_dpo)
        sft_gap = (1.0 - self.lam) * (self.sft_score - self.f_star_sft)
        return DPO_STEP if dpo_gap > sft_gap else SFT_STEP

    def observe(self, sft: float | None = None, dpo: float | None = None) -> None:
        if sft is not None:
            self.sft_score = float(sft)
        if dpo is not None:
            self.dpo_score = float(dpo)

    def state_dict(self) -> dict[str, Any]:
        return {"sft_score": self.sft_score, "dpo_score": self.dpo_score}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sft_score = state["sft_score"]
        self.dpo_score = state["dpo_score"]


def make_schedule(name: str, lam: float, total_steps: int, seed: int = 0, **options: Any) -> Schedule:
    """Build a schedule by name. ``options``: Sequential ``order``/``switch_step``;
    Maxright ``f_star_sft``, ``f_star_dpo``, ``eval_every``."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if name not in _CLASSES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {name!r}")
    if name == ALRIGHT:
        options["seed"] = seed
    return _CLASSES[name](lam, total_steps, **options)


_CLASSES: dict[str, type[Schedule]] = {cls.name: cls for cls in (Sequential, Mix, Alright, Maxright)}
