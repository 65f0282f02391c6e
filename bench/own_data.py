"""The README's "your model and your data" walk-through, run as written: ``rightsweep inspect``
on the real fixture rows (Alpaca for SFT, stack-exchange-paired for preferences), then
``inspect`` again with the settings it suggested, then one smoke sweep with them. Writes the
three outputs to ``bench/results/own_data.txt``.

No hub here: "your model" is a stand-in, the embedded base saved with 4096 positions (it is
rotary, so the same weights take longer sequences) in a folder as ``save_pretrained`` writes it.

    python -m bench.own_data        # about 5 minutes on 2 cores
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time

from bench.common import RESULTS, ROOT, WORK, quiet_offline

FIXTURES = ROOT.parent / "shared" / "fixtures"


def standin_model(dst, cache_dir) -> None:
    from workers.embedded import ensure_embedded

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(ensure_embedded(cache_dir) / "base", dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}, indent=1))


def run(args: list[str], summary_only: bool = False) -> tuple[str, str]:
    """(the command as a user types it, its output: everything, or a sweep's console line per
    trial and the summary it prints at its end, from its table of seed means on, without the
    other log lines)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=WORK / "own", stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    out = proc.stdout
    if summary_only:
        lines = proc.stdout.splitlines()
        table = next(i for i, line in enumerate(lines) if line.startswith("per schedule and λ"))
        trials = [line for line in lines[:table] if " rightsweep.trials: " in line]
        out = "\n".join(["[… the preparation's and the trial processes' log lines …]", *trials, "[…]", *lines[table:]]) + "\n"
    return "rightsweep " + " ".join(shlex.quote(a) for a in args), f"{out}(exit {proc.returncode}, {time.perf_counter() - started:.0f} s)\n"


def main() -> None:
    quiet_offline()
    if not FIXTURES.is_dir():
        raise SystemExit(f"python -m bench.own_data: the real-data fixtures are not at {FIXTURES} (../shared beside the clone)")
    work = WORK / "own"
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    for name in ("alpaca_tiny.json", "stack_exchange_paired_tiny.json"):
        shutil.copy(FIXTURES / name, work / "data" / name)
    standin_model(work / "my-model", work / "results" / "cache")
    own = ["--config", "smoke", "--set", "trial.model.name=my-model",
           "--set", "trial.data.sft={source: data/alpaca_tiny.json}",
           "--set", "trial.data.pref={source: data/stack_exchange_paired_tiny.json, preset: custom, "
                    "columns: {prompt: question, chosen: response_j, rejected: response_k}}",
           "--set", "storage=results"]
    first = run(["inspect", *own])
    fix = first[1].split("settings that would work: ")[1].splitlines()[0].split()
    second = run(["inspect", *own, *fix])
    sweep = run(["sweep", *own, *fix, "--set", "trial.train.batch_size=4"], summary_only=True)  # 3,000-token pairs, 2 cores
    text = "".join(f"$ {cmd}\n{out}\n" for cmd, out in (first, second, sweep))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "own_data.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
