"""Does the default sweep's front hinge on its seeds? The default grid run twice, with
seeds {0, 1, 2} and with {3, 4, 5}: which (schedule, λ) cells are on the front over seed
means in each, which are not separable from it, and each sweep's wall time (the default
sweep must stay under 15 minutes on 2 cores).

    python -m bench.seeds
"""

from __future__ import annotations

import json

from bench.common import quiet_offline, write_result
from bench.sweeps import run_sweep

SEED_SETS = {"default-seeds012": [0, 1, 2], "default-seeds345": [3, 4, 5]}


def main() -> None:
    quiet_offline()
    out = {}
    for name, seeds in SEED_SETS.items():
        print(f"{name}: the default sweep with seeds {seeds}", flush=True)
        r = run_sweep(name, "default", [f"sweep.seeds={seeds}"])
        report = json.loads((r["storage"] / name / "report" / "pareto.json").read_text())
        out[name] = {"seeds": seeds, "wall_s": r["wall_s"], "n_trials": len(r["trials"]), "front": report["front"],
                     "not_separable": report["not_separable"], "anchors": report["anchors"],
                     "hypervolume": report["hypervolume"], "hypervolume_reference": report["hypervolume_reference"],
                     "cells": report["cells"]}
        print(f"  {len(r['trials'])} trials in {r['wall_s'] / 60:.1f} min; front: {', '.join(report['front'])}", flush=True)
    a, b = (set(out[k]["front"]) for k in SEED_SETS)
    comparison = {"same_front": a == b, "both": sorted(a & b), "only_seeds012": sorted(a - b), "only_seeds345": sorted(b - a)}
    print(f"same front membership: {comparison['same_front']}" + ("" if comparison["same_front"] else
          f" (only with 0-2: {comparison['only_seeds012']}; only with 3-5: {comparison['only_seeds345']})"), flush=True)
    write_result("seeds", {"sweeps": out, "comparison": comparison}, "python -m bench.seeds")


if __name__ == "__main__":
    main()
