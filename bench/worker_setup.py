"""A profile, not part of ``make bench``: where a fresh process's set-up goes, as in a Ray
Train worker (a new process every ``fit``). Each phase runs in the order the loop meets it,
in a new spawned process, three times; the embedded cache must exist (``make bench`` or
one sweep builds it).

    python -m bench.worker_setup
"""

from __future__ import annotations

import time

from bench.common import prepare_cache, quiet_offline, run_isolated, trial_config


def _phases(raw: dict) -> dict[str, float]:
    times, started = {}, time.perf_counter()

    def mark(name: str) -> None:
        nonlocal started
        times[name] = time.perf_counter() - started
        started = time.perf_counter()

    import torch

    mark("import torch")
    import workers.loop  # noqa: F401 (the import a worker pays to unpickle the loop)

    mark("import workers.loop")
    from workers.config import TrialConfig
    from workers.inputs import load_inputs
    from workers.model import load_policy, load_tokenizer

    cfg = TrialConfig.model_validate(raw)
    load_tokenizer(cfg.model, cfg.cache_dir)
    mark("tokenizer (imports transformers)")
    load_inputs(cfg, torch.device("cpu"))
    mark("tokenized data + reference cache")
    load_policy(cfg.model, cfg.cache_dir, torch.device("cpu"))
    mark("model (imports the GPT-NeoX module)")
    load_policy(cfg.model, cfg.cache_dir, torch.device("cpu"))
    mark("model again (warm)")
    return times


def main() -> None:
    quiet_offline()
    prepare_cache()
    raw = trial_config()
    runs = [run_isolated(_phases, raw) for _ in range(3)]
    for name in runs[0]:
        print(f"{name:<38} " + "  ".join(f"{r[name]:.2f}" for r in runs) + " s", flush=True)


if __name__ == "__main__":
    main()
