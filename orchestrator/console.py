"""The sweep's console while trials run: a line as each trial starts and ends, and every
``EVERY_S`` how far the sweep is (trials ended of the total, those running, ETA). Tune's
own tables are off: their config column is cut to 20 characters and their result tables
print every metric of every trial."""

from __future__ import annotations

import heapq
import logging
import statistics
import time
from pathlib import Path

from orchestrator.resume import stop_file
from orchestrator.space import Point
from workers import metrics as names

log = logging.getLogger("rightsweep.trials")
EVERY_S = 30.0


def eta_s(ended_s: list[float], running_s: list[float], waiting: int, slots: int) -> float | None:
    """Seconds until the last trial ends, if each takes the mean time of those that ended:
    the running trials finish their mean (at least now), then the waiting ones take the
    first free of ``slots``. None before any trial ended."""
    if not ended_s:
        return None
    mean = statistics.fmean(ended_s)
    free = [max(mean - r, 0.0) for r in running_s] + [0.0] * max(slots - len(running_s), 0)
    heapq.heapify(free)
    for _ in range(waiting):
        heapq.heappush(free, heapq.heappop(free) + mean)
    return max(free, default=0.0)


def duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s" if m else f"{s}s"


def console(total: int, slots: int, at_most: bool, sweep_dir: Path):
    """A Tune callback on the driver. ``total``: the sweep's trials (``at_most``: an
    adaptive search's bound, which may end sooner)."""
    from ray.tune import Callback

    class _Console(Callback):
        def __init__(self):
            self.t0 = self.last = time.monotonic()
            self.started: dict[str, float] = {}
            self.ended: list[float] = []
            self.evaluated: dict[str, str] = {}  # trial id -> its latest evaluation, as a line shows it

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if names.SFT_LOSS in result and names.DPO_LOSS in result:
                self.evaluated[trial.trial_id] = (f"step {result[names.STEP]}: f_SFT {result[names.SFT_LOSS]:.4f}  "
                                                  f"f_DPO {result[names.DPO_LOSS]:.4f}")

        def status(self) -> str:
            now = time.monotonic()
            running = [now - t for t in self.started.values()]
            waiting = max(total - len(self.ended) - len(running), 0)
            eta = eta_s(self.ended, running, waiting, slots)
            return (f"{len(self.ended)} of {'at most ' if at_most else ''}{total} trials ended, {len(running)} running; "
                    f"{duration(now - self.t0)} so far" + (f", about {duration(eta)} to go" if eta else ""))

        def end(self, trial, how: str) -> None:
            self.ended.append(time.monotonic() - self.started.pop(trial.trial_id, self.t0))
            point = f"at {self.evaluated[trial.trial_id]}" if trial.trial_id in self.evaluated else "before its first evaluation"
            log.info("%s %s %s in %s · %s", label(trial), how, point, duration(self.ended[-1]), self.status())

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started[trial.trial_id] = time.monotonic()
            log.info("%s started", label(trial))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.end(trial, "stopped early" if stop_file(sweep_dir, label(trial)).exists() else "ended")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.end(trial, "FAILED")

        def on_step(self, iteration, trials, **info):
            if time.monotonic() - self.last >= EVERY_S and self.started:
                self.last = time.monotonic()
                log.info("%s", self.status())

    return _Console()


def label(trial) -> str:
    return Point.from_dict(trial.config["point"]).label
