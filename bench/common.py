"""What every benchmark shares: where results go, the machine they ran on, the embedded
trial config, and running one trial in a fresh process.

A fresh process per trial matters for two figures: peak memory (``ru_maxrss`` only ever
grows within a process) and cold-start costs, which every trial then pays alike.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from workers import metrics
from workers.schedules import ALRIGHT

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "bench" / ".work"  # caches and scratch sweeps; not committed
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
             "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")))

    def version(package: str) -> str | None:  # bench.gpu runs where Ray is not installed
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(), "torch": torch.__version__, "ray": version("ray"),
        "transformers": version("transformers"),
        "torch_threads": torch.get_num_threads(), "kernels": torch.backends.cpu.get_cpu_capability(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def quiet_offline() -> None:
    """No hub access and no progress bars, for this process and the ones it starts."""
    os.environ.update({k: v for k, v in QUIET_ENV.items() if k not in os.environ})


def write_result(name: str, data: dict, command: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"machine": machine(), "command": command, **data}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
    print(f"wrote {path.relative_to(ROOT)}", flush=True)
    return path


def read_result(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def trial_config(**train) -> dict:
    """The embedded default preset's trial (600 steps, batch 16, lr 3e-3, eval every 50) as
    a plain dict, with ``train`` overrides; only the final checkpoint, none kept."""
    from orchestrator.config import load_config

    cfg = load_config("default", [f"storage={WORK}", "trial.train.checkpoint_every=0"])
    raw = cfg.trial.model_dump()
    raw["train"].update(train)
    return raw


def _fit_in_this_process(raw: dict) -> dict:
    """Child side of ``run_trial``: one ``fit`` with no Ray; the final point plus what the
    benchmarks need of the trajectory."""
    from workers.config import TrialConfig
    from workers.loop import fit
    from workers.session import LocalSession

    started = time.perf_counter()
    trajectory = fit(TrialConfig.model_validate(raw), LocalSession())
    wall = time.perf_counter() - started
    first, last = trajectory[0], trajectory[-1]
    return {
        "sft_loss": last[metrics.SFT_LOSS], "dpo_loss": last[metrics.DPO_LOSS], "pref_accuracy": last[metrics.PREF_ACCURACY],
        "train_s": last[metrics.TRAIN_S], "eval_s": last[metrics.EVAL_S], "fit_wall_s": wall,
        "sft_accuracy": last.get(metrics.GEN_SFT_ACCURACY), "pref_win_rate": last.get(metrics.GEN_PREF_WIN_RATE),
        "gen_s": last[metrics.GEN_S], "peak_mem_mb": last[metrics.PEAK_MEM_MB], "setup_peak_mem_mb": first[metrics.PEAK_MEM_MB],
        "updates_sft": last[metrics.updates("sft")], "updates_dpo": last[metrics.updates("dpo")],
        "best_sft_loss": min(p[metrics.SFT_LOSS] for p in trajectory),
        "best_dpo_loss": min(p[metrics.DPO_LOSS] for p in trajectory),
        "trajectory": [[p[metrics.STEP], p[metrics.SFT_LOSS], p[metrics.DPO_LOSS]] for p in trajectory],
    }


def run_isolated(fn, *args):
    """``fn(*args)`` in a fresh spawned process (nothing inherited: allocator state,
    peak RSS, warm kernels), one at a time."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        return pool.submit(fn, *args).result()


def run_trial(raw: dict) -> dict:
    return run_isolated(_fit_in_this_process, raw)


def prepare_cache() -> None:
    """Build the embedded model, data and reference log-probs once, before anything is timed."""
    run_trial(trial_config(schedule=ALRIGHT, total_steps=1, eval_every=1))
