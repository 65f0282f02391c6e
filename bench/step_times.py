"""A profile, not part of ``make bench``: optimizer-step times by objective, and by whether
the previous step was of the other objective, for Sequential and ALRIGHT at λ = 0.5,
in-process and warm (the real loop; ``train_step`` is wrapped with a timer).

    python -m bench.step_times
"""

from __future__ import annotations

import statistics
import time

from bench.common import quiet_offline, trial_config
from workers.schedules import ALRIGHT, SEQUENTIAL


def main() -> None:
    quiet_offline()
    import workers.loop as loop
    from workers.config import TrialConfig
    from workers.session import LocalSession

    times: dict[str, list[float]] = {}
    previous = {"objective": None}
    step = loop.train_step

    def timed(s, cfg, i, device):
        started = time.perf_counter()
        out = step(s, cfg, i, device)
        name = "+".join(sorted(out))
        after = "same" if previous["objective"] in (None, name) else "switch"
        times.setdefault(f"{name} after {after}", []).append(time.perf_counter() - started)
        previous["objective"] = name
        return out

    loop.train_step = timed
    for seed in range(3):
        for schedule in (SEQUENTIAL, ALRIGHT):
            times.clear()
            previous["objective"] = None
            loop.fit(TrialConfig.model_validate(trial_config(schedule=schedule, lam=0.5, seed=seed)), LocalSession())
            cells = "  ".join(f"{k}: {len(v)} × {1000 * statistics.median(v):.2f} ms" for k, v in sorted(times.items()))
            print(f"{schedule:<10} seed {seed}  {cells}", flush=True)


if __name__ == "__main__":
    main()
