"""A trial's inputs: the tokenizer, both datasets split by prompt and tokenized, and the
preference pairs with their reference log-probs. The loop reads them through
``load_inputs``; the driver checks and builds them once, before any trial, through
``prepare`` — after ``plan_reference`` and one ``reference_shard`` per process when the
reference pass is split over several."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from workers.config import TrialConfig
from workers.data import BatchStream, TokenTable, cached_tokenized, dataset_record
from workers.model import add_lora, fused_optimizer, load_tokenizer, model_path, weights_identity
from workers.precision import kernels
from workers.reference import attach_reference, compute_shard, ensure_reference, pair_sets, reference_plan

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Inputs:
    tokenizer: "PreTrainedTokenizerBase"
    sft_train: TokenTable
    sft_eval: TokenTable
    pref_train: TokenTable  # with ref_chosen / ref_rejected columns
    pref_eval: TokenTable  # likewise


_last: tuple[str, Inputs] | None = None  # (key, inputs) of the last trial in this process


def load_inputs(cfg: TrialConfig, device: torch.device, shards: list[dict] = ()) -> Inputs:
    """The trial's inputs, the pairs carrying their reference log-probs.

    A Tune trial process runs trial after trial of one sweep (``reuse_actors``), all on
    the same inputs: the last ones are kept, so only the first trial pays for them.
    Nothing downstream mutates them (batches are collated copies). ``shards``: a reference
    pass computed by several processes, for ``ensure_reference`` to merge."""
    global _last
    key = json.dumps([cfg.model.model_dump(), cfg.data.model_dump(), cfg.train.precision, cfg.cache_dir, str(device)],
                     sort_keys=True)
    if _last is None or _last[0] != key:
        _last = (key, _read(cfg, device, shards))
    return _last[1]


def _read(cfg: TrialConfig, device: torch.device, shards: list[dict]) -> Inputs:
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    sft_train, sft_eval, pref_train, pref_eval = cached_tokenized(cfg.data, tokenizer, cfg.cache_dir)
    (ref_train, ref_eval), _ = ensure_reference(cfg, tokenizer, pref_train, pref_eval, device, shards)
    return Inputs(tokenizer, sft_train, sft_eval, attach_reference(pref_train, *ref_train), attach_reference(pref_eval, *ref_eval))


def numerics(cfg: TrialConfig, device: torch.device) -> dict[str, str]:
    """What a trial's numbers depend on besides its config: recorded with every sweep."""
    return {"base_weights": weights_identity(cfg.model, cfg.cache_dir), "torch": torch.__version__,
            "threads": str(cfg.threads), "device": device.type, "kernels": kernels(device), "precision": cfg.train.precision,
            "optimizer": f"torch.optim.AdamW(fused={fused_optimizer(device)})"}


def _process(trial: dict) -> tuple[TrialConfig, torch.device]:
    """The config and device of a preparing process, at the trial's thread count: the
    reference log-probs are computed as a trial would compute them."""
    cfg = TrialConfig.model_validate(trial)
    torch.set_num_threads(cfg.threads)
    return cfg, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def plan_reference(trial: dict, shards: int) -> list[dict]:
    """The first step of a reference pass over ``shards`` processes: the embedded assets
    and the token cache built, and each process's ranges of the pairs not yet cached
    (``reference.reference_plan``; [] when all are)."""
    cfg, device = _process(trial)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    _, _, pref_train, pref_eval = cached_tokenized(cfg.data, tokenizer, cfg.cache_dir)
    return reference_plan(cfg, pair_sets(cfg, {"train": pref_train, "eval": pref_eval}, device), shards)


def reference_shard(trial: dict, shard: dict) -> dict:
    """One process's share of the pass: its ranges' log-probs, read from the token cache.
    A machine with several GPUs and no Ray to assign them (the local pool) spreads the
    shards over them; under Ray each task sees only its own."""
    cfg, device = _process(trial)
    if device.type == "cuda":
        device = torch.device("cuda", shard["index"] % torch.cuda.device_count())
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    _, _, pref_train, pref_eval = cached_tokenized(cfg.data, tokenizer, cfg.cache_dir)
    return compute_shard(cfg, tokenizer, {"train": pref_train, "eval": pref_eval}, shard, device)


def prepare(trial: dict, world_size: int, shards: list[dict] = ()) -> dict:
    """Build the inputs every trial shares (the embedded assets, the reference log-probs)
    and read them far enough to refuse what the config alone could not show, as a
    ``ConfigError``: no row fits max_len, a worker's share cannot fill a batch, LoRA targets
    match nothing, the model cannot be loaded. Returns ``numerics`` and each dataset's
    ``data.dataset_record``, for the sweep's record.
    ``shards``: ``reference_shard``'s results, merged into the reference cache here.
    Takes and returns plain values: it runs in a Ray task or a fresh process."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg, device = _process(trial)
    inputs = load_inputs(cfg, device, shards)
    for ds in (inputs.sft_train, inputs.pref_train):
        BatchStream(ds, cfg.train.batch_size, 0, collate=None, world_size=world_size)
    if cfg.model.lora is not None:  # the adapters' targets must exist; a weightless model shows it
        m = cfg.model
        config = AutoConfig.from_pretrained(model_path(m, cfg.cache_dir), revision=m.revision, trust_remote_code=m.trust_remote_code)
        with torch.device("meta"):
            add_lora(AutoModelForCausalLM.from_config(config, trust_remote_code=m.trust_remote_code), m)
    datasets = [dataset_record(spec, kind, cfg.cache_dir, len(train), len(held))
                for kind, spec, train, held in (("sft", cfg.data.sft, inputs.sft_train, inputs.sft_eval),
                                                ("pref", cfg.data.pref, inputs.pref_train, inputs.pref_eval))]
    return {"numerics": numerics(cfg, device), "datasets": datasets}
