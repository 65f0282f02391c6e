"""Where the next (schedule, λ) adds most to the front: the adaptive search's choice, pure
(no Ray; ``orchestrator.search`` wraps it as a Tune searcher).

Per schedule, the known cells (seed means of finished trials) sorted by λ, with the anchors
as the ends every schedule shares — λ = 0 is SFT alone and λ = 1 DPO alone, whatever the
schedule — form neighbour pairs. Whatever a λ between two neighbours gives, the best it can
do is their ideal corner (the lower of each loss): the pair's gap is what that corner would
add to the hypervolume of the global front (every schedule's cells and the anchors), in the
box the report scores (``pareto.hypervolume_reference``), as a share of that box. A pair
whose area other schedules already cover leaves no gap, however far apart its own points
are. The next λ splits the pair with the largest gap, weighted by how much its schedule
adds to the global front:

- Mix, where λ really is a scalarisation weight ``(1−λ)·f_SFT + λ·f_DPO``, takes the weight
  whose level line is parallel to the segment between the pair (NISE, arXiv 1709.00797):
  the point of the front that segment hides.
- The others take the λ midpoint: their λ is a step share, not a weight.

λs already running, queued or stopped inside a pair split it already: the pair's gap is
shared among its pieces, and a new λ goes to the middle of the widest piece. No new λ
comes closer than ``min_width`` to one already there: below ~0.1 the seeds' spread is as
large as the step between neighbours, and refining chases noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.pareto import hypervolume
from workers.schedules import MIX

DIGITS = 4  # proposed λs are rounded: labels and folders stay short


@dataclass(frozen=True)
class Proposal:
    schedule: str
    lam: float
    reason: str


def pair_gap(a: tuple[float, float], b: tuple[float, float], front: list[tuple[float, float]],
             reference: tuple[float, float]) -> float:
    """The share of the box (0, 0)–``reference`` that the ideal corner of ``a`` and ``b``
    would add to what ``front`` dominates: 0 when one of the two dominates the other (their
    corner is that point) or when ``front`` covers the rectangle between them."""
    corner = (min(a[0], b[0]), min(a[1], b[1]))
    return (hypervolume([*front, corner], reference) - hypervolume(front, reference)) / (reference[0] * reference[1])


def nise_weight(a: tuple[float, float], b: tuple[float, float]) -> float | None:
    """The λ whose scalarisation ``(1−λ)·f_SFT + λ·f_DPO`` is equal at ``a`` and ``b`` (raw
    losses, ``a`` the smaller λ), or None when the pair is not in trade-off order (``a``
    better on SFT, ``b`` on DPO)."""
    d_sft, d_dpo = b[0] - a[0], b[1] - a[1]
    if not (d_sft > 0 and d_dpo < 0):
        return None
    return d_sft / (d_sft - d_dpo)


def contributions(cells: dict[str, dict[float, tuple[float, float]]], shared: list[tuple[float, float]],
                  reference: tuple[float, float]) -> dict[str, float]:
    """Each schedule's share of the global front: the hypervolume lost without its cells
    (the anchors are everybody's), normalised to sum to 1; equal shares when none adds any."""
    every = [pt for by_lam in cells.values() for pt in by_lam.values()] + shared
    total = hypervolume(every, reference)
    lost = {s: total - hypervolume([pt for t, by_lam in cells.items() if t != s for pt in by_lam.values()] + shared, reference)
            for s in cells}
    mass = sum(lost.values())
    return {s: (v / mass if mass > 0 else 1.0 / len(cells)) for s, v in lost.items()}


def propose(cells: dict[str, dict[float, tuple[float, float]]], occupied: dict[str, set[float]],
            ends: dict[float, tuple[float, float]], min_width: float, reference: tuple[float, float]) -> Proposal | None:
    """The next cell to run, or None when no pair can be split.

    ``cells``: per schedule, λ → (f_SFT, f_DPO) seed means of its finished cells (the
    schedules to search are its keys); ``occupied``: per schedule, λs running, queued or
    stopped (they split pairs but have no point); ``ends``: the anchors' points at λ 0 and 1;
    ``reference``: the corner of the box the hypervolume is scored in.
    A schedule's weight is half an even share and half its share of the global front, so
    no schedule starves while the budget leans to those that make the front."""
    front = [pt for by_lam in cells.values() for pt in by_lam.values()] + list(ends.values())
    if len(front) < 2:
        return None
    share = contributions(cells, list(ends.values()), reference)
    best: tuple[float, Proposal] | None = None
    for schedule, by_lam in cells.items():
        known = {**ends, **by_lam}
        lams = sorted(known)
        weight = 0.5 / len(cells) + 0.5 * share[schedule]
        for lam_a, lam_b in zip(lams, lams[1:]):
            a, b = known[lam_a], known[lam_b]
            gap = pair_gap(a, b, front, reference)
            inside = sorted(x for x in occupied.get(schedule, set()) if lam_a < x < lam_b)
            score = weight * gap / (1 + len(inside))
            cuts = [lam_a, *inside, lam_b]
            lo_cut, hi_cut = max(zip(cuts, cuts[1:]), key=lambda c: c[1] - c[0])
            if gap <= 0 or (hi_cut - lo_cut) / 2 < min_width - 1e-9 or (best is not None and score <= best[0]):
                continue
            lam, how = (lo_cut + hi_cut) / 2, "the middle"
            w = nise_weight(a, b) if schedule == MIX and not inside else None
            if w is not None:
                lam, how = min(max(w, lam_a + min_width), lam_b - min_width), f"the NISE weight ({w:.3f})"
            lam = round(lam, DIGITS)
            reason = (f"{how} of λ {lo_cut:g}–{hi_cut:g}: the largest front gap, {gap:.3f} of the hypervolume box "
                      f"between λ {lam_a:g} and {lam_b:g}" + (f" (shared with {len(inside)} λ there)" if inside else "")
                      + f"; {schedule} holds {share[schedule]:.0%} of the front")
            best = (score, Proposal(schedule, lam, reason))
    return best[1] if best else None
