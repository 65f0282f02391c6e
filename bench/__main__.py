"""``make bench``: every benchmark, then BENCHMARKS.md. Offline; about 2 hours on 2 cores (41 minutes measured
before bench.memory, which took 7; bench.inputs 25, bench.search 85, bench.own_data 5).

Each part writes ``bench/results/<part>.json`` as it finishes, so one part can be rerun
alone (``python -m bench.paper``, ``bench.throughput``, ``bench.sweeps``) and the report
re-rendered (``python -m bench.render``).
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback

PARTS = ("bench.paper", "bench.seeds", "bench.throughput", "bench.sweeps", "bench.memory", "bench.inputs", "bench.search",
         "bench.stop_replay", "bench.own_data")


def main() -> int:
    started, failed = time.perf_counter(), []
    for name in PARTS:
        print(f"== {name} ({(time.perf_counter() - started) / 60:.1f} min in)", flush=True)
        sys.argv = [name]
        try:
            importlib.import_module(name).main()
        except Exception:
            traceback.print_exc()
            failed.append(name)
    from bench import render

    render.main()
    print(f"== done in {(time.perf_counter() - started) / 60:.1f} min" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
