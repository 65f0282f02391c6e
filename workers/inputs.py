"""A trial's inputs: the tokenizer, both datasets split by prompt and tokenized, and the
preference pairs with their reference log-probs. The loop reads them through
``load_inputs``; the driver checks and builds them once, before any trial, through
``prepare``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from workers.config import TrialConfig
from workers.data import BatchStream, TokenTable, load_tokenized
from workers.model import add_lora, fused_optimizer, load_tokenizer, model_path, weights_identity
from workers.reference import attach_reference, ensure_reference

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


def load_inputs(cfg: TrialConfig, device: torch.device) -> Inputs:
    """The trial's inputs, the pairs carrying their reference log-probs.

    A Tune trial process runs trial after trial of one sweep (``reuse_actors``), all on
    the same inputs: the last ones are kept, so only the first trial pays for them.
    Nothing downstream mutates them (batches are collated copies)."""
    global _last
    key = json.dumps([cfg.model.model_dump(), cfg.data.model_dump(), cfg.train.precision, cfg.cache_dir, str(device)],
                     sort_keys=True)
    if _last is None or _last[0] != key:
        _last = (key, _read(cfg, device))
    return _last[1]


def _read(cfg: TrialConfig, device: torch.device) -> Inputs:
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    sft_train, sft_eval, pref_train, pref_eval = load_tokenized(cfg.data, tokenizer, cfg.cache_dir)
    (ref_train, ref_eval), _ = ensure_reference(cfg, tokenizer, pref_train, pref_eval, device)
    return Inputs(tokenizer, sft_train, sft_eval, attach_reference(pref_train, *ref_train), attach_reference(pref_eval, *ref_eval))


def numerics(cfg: TrialConfig, device: torch.device) -> dict[str, str]:
    """What a trial's numbers depend on besides its config: recorded with every sweep."""
    return {"base_weights": weights_identity(cfg.model, cfg.cache_dir), "torch": torch.__version__,
            "threads": str(cfg.threads), "device": device.type, "precision": cfg.train.precision,
            "optimizer": f"torch.optim.AdamW(fused={fused_optimizer(device)})"}


def prepare(trial: dict, world_size: int) -> dict[str, str]:
    """Build the inputs every trial shares (the embedded assets, the reference log-probs)
    and read them far enough to refuse what the config alone could not show, as a
    ``ConfigError``: no row fits max_len, a worker's share cannot fill a batch, LoRA targets
    match nothing, the model cannot be loaded. Returns ``numerics``, for the sweep's record.
    Takes and returns plain values: it runs in a Ray task or a fresh process."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = TrialConfig.model_validate(trial)
    torch.set_num_threads(cfg.threads)  # the reference log-probs are computed as a trial would
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    inputs = load_inputs(cfg, device)
    for ds in (inputs.sft_train, inputs.pref_train):
        BatchStream(ds, cfg.train.batch_size, 0, collate=None, world_size=world_size)
    if cfg.model.lora is not None:  # the adapters' targets must exist; a weightless model shows it
        m = cfg.model
        config = AutoConfig.from_pretrained(model_path(m, cfg.cache_dir), revision=m.revision, trust_remote_code=m.trust_remote_code)
        with torch.device("meta"):
            add_lora(AutoModelForCausalLM.from_config(config, trust_remote_code=m.trust_remote_code), m)
    return numerics(cfg, device)
