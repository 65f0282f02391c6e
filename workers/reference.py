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
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from workers.data import collate_pairs, eval_batches
from workers.forward import pair_logps
from workers.precision import autocast, weights_dtype

log = logging.getLogger("rightsweep.reference")


def pairs_fingerprint(weights_id: str, *datasets) -> str:
    h = hashlib.sha256(weights_id.encode())
    for ds in datasets:
        for col in ("chosen_ids", "rejected_ids", "chosen_mask", "rejected_mask"):
            for seq in ds[col]:
                h.update(seq.tobytes())
                h.update(b"|")
    return h.hexdigest()[:20]


@torch.no_grad()
def compute_reference(model, dataset, batch_size: int, pad_id: int, device, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The base's log-probs as the policy computes its own (same precision): at step 0 the
    DPO margin is then exactly 0 and the loss log 2."""
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
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def _digest(chosen: torch.Tensor, rejected: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in (chosen, rejected):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _read_checked(path: Path, rows: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached log-probs if the file holds ``rows`` of each and matches the content hash
    stored with it; None (with a warning) for anything else: a storage shared by design
    must not feed a trial values nobody computed."""
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            chosen, rejected = f.get_tensor("chosen"), f.get_tensor("rejected")
    except Exception as e:  # unreadable, truncated, or without the two tensors
        log.warning("reference cache %s is unreadable (%s); recomputing it", path, e)
        return None
    if chosen.shape != (rows,) or rejected.shape != (rows,):
        log.warning("reference cache %s holds %s and %s values for %d pairs; recomputing it",
                    path, tuple(chosen.shape), tuple(rejected.shape), rows)
        return None
    if meta.get("sha256") != _digest(chosen, rejected):
        log.warning("reference cache %s does not match the content hash stored with it; recomputing it", path)
        return None
    return chosen, rejected


def cached_reference(cache_dir: str, fingerprint: str, rows: int, compute) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(chosen, rejected, computed_now) for ``rows`` pairs. ``compute()`` runs on a cache
    miss, and when the cached file fails its shape or content-hash check."""
    path = Path(cache_dir) / "reference" / f"{fingerprint}.safetensors"
    if path.exists() and (cached := _read_checked(path, rows)) is not None:
        return *cached, False
    chosen, rejected = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    chosen, rejected = chosen.contiguous(), rejected.contiguous()
    save_file({"chosen": chosen, "rejected": rejected}, tmp, metadata={"sha256": _digest(chosen, rejected), "rows": str(rows)})
    os.replace(tmp, path)  # atomic: a concurrent reader sees all or nothing
    return chosen, rejected, True


def attach_reference(dataset, chosen: torch.Tensor, rejected: torch.Tensor):
    return dataset.with_column("ref_chosen", chosen.tolist()).with_column("ref_rejected", rejected.tolist())


def ensure_reference(cfg, tokenizer, pref_train, pref_eval, device):
    """Reference log-probs of the train and eval pairs, from the cache or computed now
    with the bare base model (loaded only on a miss, freed after).
    Returns ((train_chosen, train_rejected), (eval_chosen, eval_rejected)), computed_now."""
    from workers.model import load_policy, weights_identity

    # bf16 and float32 log-probs differ by far more than noise; threads and torch's kernels by bits.
    precision = cfg.train.precision
    weights_id = (f"{weights_identity(cfg.model, cfg.cache_dir)}|{precision}|{torch.device(device).type}"
                  f"|threads={cfg.threads}|torch={torch.__version__}")
    base = None

    def compute(ds):
        def run():
            nonlocal base
            if base is None:
                base = load_policy(cfg.model, cfg.cache_dir, device, lora=False, dtype=weights_dtype(precision))
            return compute_reference(base, ds, cfg.train.eval_batch_size, tokenizer.pad_token_id, device, precision)

        return run

    out, computed, started = [], [], time.perf_counter()
    for ds in (pref_train, pref_eval):
        fingerprint = pairs_fingerprint(weights_id, ds)
        chosen, rejected, now = cached_reference(cfg.cache_dir, fingerprint, len(ds), compute(ds))
        out.append((chosen, rejected))
        if now:
            computed.append(fingerprint)
    del base
    if computed:
        record_pass(cfg.cache_dir, computed, len(pref_train) + len(pref_eval), time.perf_counter() - started)
    return tuple(out), bool(computed)


def record_pass(cache_dir: str, fingerprints: list[str], pairs: int, seconds: float) -> None:
    """One line per reference pass over the preference data, in ``reference/passes.jsonl``:
    how a sweep shows (and the benchmarks count) that its N trials shared one pass."""
    line = {"time": time.time(), "host": socket.gethostname(), "pid": os.getpid(), "fingerprints": fingerprints,
            "pairs": pairs, "seconds": round(seconds, 3)}
    with open(Path(cache_dir) / "reference" / "passes.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    log.info("reference log-probs of %d pairs computed in %.1fs (cached for every trial)", pairs, seconds)
