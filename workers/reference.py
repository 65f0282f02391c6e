"""Reference log-probs, computed once per (reference weights, tokenized pairs) and cached.

The DPO reference is fixed for the whole run, so its sequence log-probs on every pair
are a constant table: precomputing them means no trial holds a second model or runs a
reference forward per step. The cache key covers everything the numbers depend on —
the weights (or hub name and commit), the numerics (precision, device, threads, torch
version) and the token ids themselves, which already encode tokenizer, dataset, template
and max_len.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch

from workers.cache import read_checked, write_checked
from workers.data import collate_pairs, eval_batches
from workers.forward import pair_logps
from workers.precision import autocast, kernels, weights_dtype
from workers.progress import progress_bar

log = logging.getLogger("rightsweep.reference")


PAIR_COLUMNS = ("chosen_ids", "rejected_ids", "chosen_mask", "rejected_mask")


def pairs_fingerprint(weights_id: str, *datasets) -> str:
    h = hashlib.sha256(weights_id.encode())
    for ds in datasets:
        for col in PAIR_COLUMNS:
            h.update(ds[col].values.tobytes())
            h.update(ds[col].offsets.tobytes())
    return h.hexdigest()[:20]


def reference_key(cfg, device) -> str:
    """The weights and the numerics: bf16 and float32 log-probs differ by far more than
    noise; threads and torch's kernels by bits."""
    from workers.model import weights_identity

    return (f"{weights_identity(cfg.model, cfg.cache_dir)}|{cfg.train.precision}|{torch.device(device).type}"
            f"|threads={cfg.threads}|torch={torch.__version__}|kernels={kernels(device)}")


def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    import ctypes

    return getattr(ctypes.CDLL(None), "malloc_trim", None)


_TRIM = _malloc_trim() if sys.platform.startswith("linux") else None


@torch.no_grad()
def compute_reference(model, dataset, batch_size: int, pad_id: int, device, precision: str,
                      bar=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The base's log-probs as the policy computes its own (same precision): at step 0 the
    DPO margin is then exactly 0 and the loss log 2. Only the two floats a pair are kept
    from each batch, so memory does not grow with the rows beyond them."""
    # With LoRA the reference is the base: adapters off. (Freshly initialised adapters are a
    # no-op anyway, but a resumed or pre-trained adapter is not.)
    disable = getattr(model, "disable_adapter", None)
    ctx = disable() if disable is not None else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    with ctx:
        for batch in eval_batches(dataset, batch_size, lambda rows: collate_pairs(rows, pad_id)):
            with autocast(precision, device):
                c, r = pair_logps(model, {k: v.to(device) for k, v in batch.items()})
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
            if bar is not None:
                bar.update(len(c))
            if _TRIM is not None and torch.device(device).type == "cpu":
                # Every batch has its own padded length, so glibc's heap fills with freed blocks
                # of sizes the next batch cannot reuse, and RSS crept up with the rows (bench.inputs,
                # 50k pairs at max_len 512: a 2.1 GB peak; 1.2 GB, the same as for 25k, handed back).
                del c, r
                _TRIM(0)
    model.train(was_training)
    empty = torch.zeros(0)
    return torch.cat(chosen) if chosen else empty, torch.cat(rejected) if rejected else empty


def _read_reference(path: Path, rows: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached log-probs if the file holds ``rows`` of each and matches the content hash
    stored with it; None (with a warning) for anything else: a storage shared by design
    must not feed a trial values nobody computed."""
    checked = read_checked(path, "reference cache")
    if checked is None:
        return None
    arrays = checked[0]
    if set(arrays) != {"chosen", "rejected"}:
        log.warning("reference cache %s holds %s, not chosen and rejected; recomputing it", path, sorted(arrays))
        return None
    chosen, rejected = torch.from_numpy(arrays["chosen"]), torch.from_numpy(arrays["rejected"])
    if chosen.shape != (rows,) or rejected.shape != (rows,):
        log.warning("reference cache %s holds %s and %s values for %d pairs; recomputing it",
                    path, tuple(chosen.shape), tuple(rejected.shape), rows)
        return None
    return chosen, rejected


def cached_reference(cache_dir: str, fingerprint: str, rows: int, compute) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(chosen, rejected, computed_now) for ``rows`` pairs. ``compute()`` runs on a cache
    miss, and when the cached file fails its shape or content-hash check."""
    path = reference_path(cache_dir, fingerprint)
    if path.exists() and (cached := _read_reference(path, rows)) is not None:
        return *cached, False
    chosen, rejected = compute()
    chosen, rejected = chosen.contiguous(), rejected.contiguous()
    write_checked(path, {"chosen": chosen.numpy(), "rejected": rejected.numpy()}, {"rows": str(rows)})
    return chosen, rejected, True


def reference_path(cache_dir: str, fingerprint: str) -> Path:
    return Path(cache_dir) / "reference" / f"{fingerprint}.safetensors"


def attach_reference(dataset, chosen: torch.Tensor, rejected: torch.Tensor):
    return dataset.with_column("ref_chosen", chosen.tolist()).with_column("ref_rejected", rejected.tolist())


def shard_bounds(rows: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous (start, stop) ranges of ``rows`` for ``shards`` processes, each a whole
    number of ``batch_size`` batches (the last one's may be short), as even as that allows;
    empty ranges left out. Each shard then runs exactly the batches a single pass runs —
    the same rows padded to the same length — so its floats are the single pass's bits."""
    batches = -(-rows // batch_size)
    cuts = [round(batches * k / shards) * batch_size for k in range(shards + 1)]
    return [(a, min(b, rows)) for a, b in zip(cuts, cuts[1:]) if a < min(b, rows)]


def pair_sets(cfg, tables: dict, device) -> list[dict]:
    """Each table of pairs ("train", "eval") as the whole range of a reference pass: its
    fingerprint (hashed once here: the ids of a hub-scale set take a while) and rows."""
    key = reference_key(cfg, device)
    return [{"table": table, "fingerprint": pairs_fingerprint(key, ds), "rows": len(ds), "start": 0, "stop": len(ds)}
            for table, ds in tables.items()]


def uncached(cache_dir: str, sets: list[dict]) -> list[dict]:
    """The sets whose cache file is missing or fails its checks."""
    return [p for p in sets if not (path := reference_path(cache_dir, p["fingerprint"])).exists()
            or _read_reference(path, p["rows"]) is None]


def reference_plan(cfg, sets: list[dict], shards: int) -> list[dict]:
    """What ``shards`` processes compute between them: each uncached set of pairs split
    into contiguous ranges, one per process; [] when every set is cached. Plain values:
    they cross Ray and process boundaries."""
    plan = [{"index": k, "shards": shards, "parts": []} for k in range(shards)]
    for p in uncached(cfg.cache_dir, sets):
        for k, (start, stop) in enumerate(shard_bounds(p["rows"], cfg.train.eval_batch_size, shards)):
            plan[k]["parts"].append({**p, "start": start, "stop": stop})
    return [shard for shard in plan if shard["parts"]]


def compute_shard(cfg, tokenizer, tables: dict, shard: dict, device) -> dict:
    """One process's share of a reference pass: the log-probs of its ranges of the pairs
    (``tables`` maps "train" and "eval" to them), with when it started and ended. Shard 0
    shows the progress (the shards are even, so its ETA is the pass's)."""
    from workers.model import load_policy

    started = time.time()
    precision = cfg.train.precision
    base = load_policy(cfg.model, cfg.cache_dir, device, lora=False, dtype=weights_dtype(precision))
    pairs = sum(p["stop"] - p["start"] for p in shard["parts"])
    label = f"reference log-probs, shard {shard['index'] + 1} of {shard['shards']}"
    parts = []
    with progress_bar(pairs, label, "pair", show=shard["index"] == 0) as bar:
        for p in shard["parts"]:
            ds = tables[p["table"]].rows(p["start"], p["stop"])
            chosen, rejected = compute_reference(base, ds, cfg.train.eval_batch_size, tokenizer.pad_token_id, device,
                                                 precision, bar)
            parts.append({**p, "chosen": chosen.numpy(), "rejected": rejected.numpy()})
    return {"index": shard["index"], "parts": parts, "started": started, "finished": time.time()}


def merge_shards(results: list[dict]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """fingerprint -> (chosen, rejected) of every set of pairs the shards covered whole, in
    order; a set with a gap or an overlap is left out (and then computed in-process)."""
    by_fingerprint: dict[str, list[dict]] = {}
    for result in results:
        for p in result["parts"]:
            by_fingerprint.setdefault(p["fingerprint"], []).append(p)
    merged = {}
    for fingerprint, parts in by_fingerprint.items():
        parts.sort(key=lambda p: p["start"])
        starts, stops = [p["start"] for p in parts], [p["stop"] for p in parts]
        if starts[0] != 0 or starts[1:] != stops[:-1] or stops[-1] != parts[0]["rows"]:
            log.warning("reference shards of %s do not cover its %d pairs once; computing them here", fingerprint,
                        parts[0]["rows"])
            continue
        merged[fingerprint] = (torch.from_numpy(np.concatenate([p["chosen"] for p in parts])),
                               torch.from_numpy(np.concatenate([p["rejected"] for p in parts])))
    return merged


def ensure_reference(cfg, tokenizer, pref_train, pref_eval, device, shards: list[dict] = ()):
    """Reference log-probs of the train and eval pairs, from the cache, from ``shards``
    (``compute_shard``'s results of a pass over several processes: merged and cached here),
    or else computed now in this process with the bare base model (loaded only then, once).
    Returns ((train_chosen, train_rejected), (eval_chosen, eval_rejected)), computed_now."""
    tables = {"train": pref_train, "eval": pref_eval}
    sets = pair_sets(cfg, tables, device)
    merged, used = merge_shards(list(shards)), list(shards)
    if here := [p for p in uncached(cfg.cache_dir, sets) if p["fingerprint"] not in merged]:
        used.append(compute_shard(cfg, tokenizer, tables, {"index": 0, "shards": 1, "parts": here}, device))
        merged.update(merge_shards(used[-1:]))
    out, computed = [], []
    for p in sets:
        chosen, rejected, now = cached_reference(cfg.cache_dir, p["fingerprint"], p["rows"], lambda: merged[p["fingerprint"]])
        out.append((chosen, rejected))
        if now:
            computed.append(p["fingerprint"])
    if computed:
        used = [r for r in used if any(part["fingerprint"] in computed for part in r["parts"])]
        seconds = max(r["finished"] for r in used) - min(r["started"] for r in used)
        record_pass(cfg.cache_dir, computed, len(pref_train) + len(pref_eval), seconds, len(used))
    return tuple(out), bool(computed)


def record_pass(cache_dir: str, fingerprints: list[str], pairs: int, seconds: float, processes: int) -> None:
    """One line per reference pass over the preference data, in ``reference/passes.jsonl``:
    how a sweep shows (and the benchmarks count) that its N trials shared one pass, however
    many processes computed it."""
    line = {"time": time.time(), "host": socket.gethostname(), "pid": os.getpid(), "fingerprints": fingerprints,
            "pairs": pairs, "seconds": round(seconds, 3), "processes": processes}
    with open(Path(cache_dir) / "reference" / "passes.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    log.info("reference log-probs of %d pairs computed in %.1fs by %d process(es) (cached for every trial)",
             pairs, seconds, processes)
