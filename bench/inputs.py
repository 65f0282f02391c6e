"""Hub-scale inputs on CPU: tokenizing a preference set of 50k generated pairs at max_len 512
into the token cache, a trial start reading it back, and the reference pass over the
pairs in one process against two (``workers.inputs.plan_reference`` and
``reference_shard``, the code a sweep runs), side by side in one run.

The data is generated in hh's schema (multi-turn ``Human:``/``Assistant:`` prompts of
the embedded vocabulary, some long enough to be truncated at 512 tokens and a few whose
prompt alone does not fit); the model is the embedded model's architecture (a tiny
GPT-NeoX with the embedded tokenizer) with random weights, so the figures are the inputs'
costs, not a big model's forward. Each step runs in a fresh process (peak RSS is a
process's VmHWM; "above start" subtracts its RSS once torch, transformers and datasets
are imported). Every process runs at one torch thread, as a trial at
``cpus_per_worker: 1`` does, so two shards use the machine's two cores.

    python -m bench.inputs                    # 50k pairs; the reference pass over REFERENCE_ROWS of them
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from bench.common import WORK, quiet_offline, run_isolated, write_result

ROWS = 50_000  # preference pairs tokenized
SFT_ROWS = 1_000  # the SFT set beside them (tokenized too: the cache holds both)
REFERENCE_ROWS = 50_000  # pairs of the reference pass (its first rows, max_rows)
MAX_LEN = 512
EVAL_BATCH = 64
SEED = 0
ROOT = WORK / "inputs"


def _words() -> list[str]:
    from workers.embedded import CONSONANTS, VOWELS

    return [a + v + b for a in CONSONANTS for v in VOWELS for b in CONSONANTS]


def _turns(rng, words: list[str], n: int) -> str:
    return " ".join(words[i] for i in rng.integers(0, len(words), n))


def generate(path_pref: Path, path_sft: Path) -> None:
    """hh-schema pairs: 0-4 earlier exchanges of 3-25 words a message, then the question,
    and chosen and rejected answers of 3-60 words (the embedded tokenizer makes about 2.3
    tokens of a word): a few hundred tokens a pair, some truncated at 512, a rare prompt
    that alone exceeds it."""
    rng, words = np.random.default_rng(SEED), _words()
    with open(path_pref, "w") as f:
        for i in range(ROWS):
            turns = "".join(f"\n\nHuman: {_turns(rng, words, rng.integers(3, 26))}\n\nAssistant: "
                            f"{_turns(rng, words, rng.integers(3, 26))}" for _ in range(rng.integers(0, 5)))
            prompt = f"{turns}\n\nHuman: question {i} {_turns(rng, words, rng.integers(5, 31))}\n\nAssistant:"
            chosen, rejected = (f" {_turns(rng, words, rng.integers(3, 61))}" for _ in range(2))
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    with open(path_sft, "w") as f:
        for i in range(SFT_ROWS):
            row = {"instruction": f"task {i} {_turns(rng, words, 10)}", "input": "", "output": _turns(rng, words, 20)}
            f.write(json.dumps(row) + "\n")


def build_model(folder: Path) -> None:
    """The embedded recipe's architecture at 512 positions, random weights, the embedded tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    from workers.embedded import RECIPE, ensure_embedded, tiny_config

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded(ROOT / "embedded") / "base")
    torch.manual_seed(SEED)
    config = tiny_config(len(tokenizer), tokenizer.eos_token_id, {**RECIPE, "max_positions": MAX_LEN})
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def trial(cache: Path, max_rows: int | None = None) -> dict:
    from workers.config import TrialConfig

    raw = {"model": {"name": str(ROOT / "model")}, "cache_dir": str(cache), "threads": 1,
           "data": {"sft": {"source": str(ROOT / "sft.jsonl")}, "pref": {"source": str(ROOT / "pref.jsonl"), "max_rows": max_rows},
                    "max_len": MAX_LEN},
           "train": {"eval_batch_size": EVAL_BATCH}}
    return TrialConfig.model_validate(raw).resolved().model_dump()


def _rss_kb(field: str) -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith(f"{field}:")))


def _imported() -> int:
    """Import what every step imports, then the RSS (kB) to measure from."""
    import datasets  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import workers.inputs  # noqa: F401

    return _rss_kb("VmRSS")


def _memory(start_kb: int) -> dict:
    return {"peak_rss_mb": _rss_kb("VmHWM") / 1024, "peak_above_start_mb": (_rss_kb("VmHWM") - start_kb) / 1024}


def tokenize_step(raw: dict) -> dict:
    """Child: the token cache read (hit) or built (miss), as a trial start does it."""
    start = _imported()
    from workers.config import TrialConfig
    from workers.data import cached_tokenized
    from workers.model import load_tokenizer

    cfg = TrialConfig.model_validate(raw)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    started = time.perf_counter()
    tables = cached_tokenized(cfg.data, tokenizer, cfg.cache_dir)
    seconds = time.perf_counter() - started
    pref = tables[2]
    return {"seconds": seconds, **_memory(start), "rows": {n: len(t) for n, t in zip(("sft_train", "sft_eval", "pref_train", "pref_eval"), tables)},
            "pref_train_tokens": int(len(pref["chosen_ids"].values) + len(pref["rejected_ids"].values)),
            "cache_file_mb": sum(f.stat().st_size for f in (Path(cfg.cache_dir) / "tokens").glob("*.safetensors")) / 2**20}


def plan_step(raw: dict, shards: int) -> list[dict]:
    from workers.inputs import plan_reference

    return plan_reference(raw, shards)


def shard_step(raw: dict, shard: dict) -> dict:
    """Child: one shard of the pass (``reference_shard``), its wall time and peak RSS."""
    start = _imported()
    from workers.inputs import reference_shard

    started = time.perf_counter()
    result = reference_shard(raw, shard)
    return {"result": result, "seconds": time.perf_counter() - started, **_memory(start)}


def reference_pass(raw: dict, shards: int) -> dict:
    """The pass over ``shards`` fresh processes at once; wall time from their start to the
    last one's end (the planning step, which reads the token cache, is timed apart)."""
    started = time.perf_counter()
    plan = run_isolated(plan_step, raw, shards)
    planned = time.perf_counter()
    with ProcessPoolExecutor(max_workers=shards, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        done = [f.result() for f in [pool.submit(shard_step, raw, shard) for shard in plan]]
    wall = time.perf_counter() - planned
    from workers.reference import merge_shards

    merged = merge_shards([d["result"] for d in done])
    pairs = sum(p["stop"] - p["start"] for d in done for p in d["result"]["parts"])
    return {"shards": shards, "plan_s": planned - started, "wall_s": wall, "pairs": pairs,
            "per_process": [{k: d[k] for k in ("seconds", "peak_rss_mb", "peak_above_start_mb")} for d in done],
            "merged": {fp: [c.numpy(), r.numpy()] for fp, (c, r) in merged.items()}}


def main() -> int:
    quiet_offline()
    load = os.getloadavg()
    ROOT.mkdir(parents=True, exist_ok=True)
    if not (ROOT / "pref.jsonl").exists():
        generate(ROOT / "pref.jsonl", ROOT / "sft.jsonl")
    if not (ROOT / "model" / "config.json").exists():
        run_isolated(build_model, ROOT / "model")
    cache = ROOT / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    raw = trial(cache)
    built = run_isolated(tokenize_step, raw)
    read = run_isolated(tokenize_step, raw)
    print(f"tokenized {sum(built['rows'].values())} rows in {built['seconds']:.1f} s (peak {built['peak_rss_mb']:.0f} MB); "
          f"read back in {read['seconds']:.2f} s (peak {read['peak_rss_mb']:.0f} MB)", flush=True)
    ref_raw = trial(cache, REFERENCE_ROWS if REFERENCE_ROWS < ROWS else None)
    run_isolated(tokenize_step, ref_raw)  # that subset's token cache, before anything is timed
    passes = [reference_pass(ref_raw, n) for n in (1, 2)]
    one, two = passes
    identical = one["merged"].keys() == two["merged"].keys() and all(
        np.array_equal(a, b) for fp in one["merged"] for a, b in zip(one["merged"][fp], two["merged"][fp]))
    for p in passes:
        print(f"reference pass, {p['shards']} process(es): {p['pairs']} pairs in {p['wall_s']:.1f} s; peak RSS "
              f"{', '.join(str(round(q['peak_rss_mb'])) for q in p['per_process'])} MB", flush=True)
        del p["merged"]
    print(f"two processes ÷ one: {two['wall_s'] / one['wall_s']:.3f} of the time; bit-identical: {identical}", flush=True)
    write_result("inputs", {
        "setup": {"rows": ROWS, "sft_rows": SFT_ROWS, "reference_rows": REFERENCE_ROWS, "max_len": MAX_LEN,
                  "eval_batch_size": EVAL_BATCH, "threads_per_process": 1, "model": "embedded architecture (GPT-NeoX, "
                  "2 layers, width 64, vocabulary 384), random weights, 512 positions"},
        "load_average_at_start": load, "tokenize": built, "cached_read": read, "reference": passes,
        "bit_identical": identical}, "python -m bench.inputs")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
