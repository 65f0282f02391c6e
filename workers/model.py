"""The policy: any AutoModelForCausalLM by hub name or local path, or the embedded tiny
model; full fine-tuning or LoRA adapters via peft; and its optimizer."""

from __future__ import annotations

from pathlib import Path

import torch

from workers.cache import files_digest
from workers.config import EMBEDDED, ConfigError, ModelSpec, TrainSpec
from workers.embedded import ensure_embedded

def model_path(spec: ModelSpec, cache_dir: str) -> str:
    if spec.name == EMBEDDED:
        return str(ensure_embedded(cache_dir) / "base")
    return spec.name


def max_positions(config) -> int | None:
    """The longest sequence a model config's position embeddings take (None when it names none)."""
    return next((v for k in ("max_position_embeddings", "n_positions", "max_sequence_length") if (v := getattr(config, k, None))),
                None)


def _offline_hint(name: str, e: Exception) -> ConfigError:
    return ConfigError(
        f"trial.model.name: could not load {name!r} ({e}). A hub name needs network access (or a populated "
        "Hugging Face cache); offline, give a local path to a saved model."
    )


def load_tokenizer(spec: ModelSpec, cache_dir: str):
    from transformers import AutoTokenizer

    name = model_path(spec, cache_dir)
    try:
        tok = AutoTokenizer.from_pretrained(name, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    except OSError as e:
        raise _offline_hint(name, e) from e
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer of {name!r} has no EOS token; responses must end with one")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is masked everywhere, any id will do
    return tok


def load_policy(spec: ModelSpec, cache_dir: str, device: torch.device, resume_dir: str | None = None, lora: bool = True,
                dtype: torch.dtype = torch.float32):
    """The model to train: the base weights (in ``dtype``) plus fresh LoRA adapters when
    asked, or the weights saved in a checkpoint's ``model/`` folder when resuming.
    ``lora=False`` gives the bare base (the DPO reference). peft keeps the adapters in
    float32 whatever the base's dtype."""
    from transformers import AutoModelForCausalLM

    name = model_path(spec, cache_dir)
    if resume_dir is not None and spec.lora is None:
        name = str(Path(resume_dir) / "model")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name,
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            dtype=dtype,
            use_safetensors=True,
        )
    except OSError as e:
        raise _offline_hint(name, e) from e
    model.config.use_cache = False  # no generation during training; the KV cache only costs memory
    if spec.lora is not None and lora:
        if resume_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, Path(resume_dir) / "model", is_trainable=True)
        else:
            model = add_lora(model, spec)
    return model.to(device)


def add_lora(model, spec: ModelSpec):
    from peft import LoraConfig, get_peft_model

    lora = spec.lora
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.targets, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"trial.model.lora.targets: {lora.targets} match no module of {spec.name!r}; its linear layers: {names}") from e


def enable_checkpointing(model) -> None:
    """Activation checkpointing of every block, non-reentrant: it works with frozen inputs
    (LoRA's base) and with DDP's hooks. (transformers 5 renamed the method.)"""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def fused_optimizer(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda")


def make_optimizer(params, t: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where torch has one: one kernel for every tensor instead
    of several per tensor, which at small model sizes was about 1 ms of a 15 ms step."""
    return torch.optim.AdamW(params, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay, fused=fused_optimizer(device))


def make_lr_scheduler(optimizer: torch.optim.Optimizer, t: TrainSpec) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup_steps``, then constant, or a linear or cosine decay to 0
    at ``total_steps``; stepped once per optimizer step and checkpointed with it."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if t.lr_schedule == "constant" else t.lr_schedule
    return get_scheduler(name, optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=t.total_steps)


def weights_identity(spec: ModelSpec, cache_dir: str) -> str:
    """What the reference log-probs depend on: the base weights' bytes for a local model,
    name and revision for a hub one (the driver pins the revision to a commit)."""
    path = Path(model_path(spec, cache_dir))
    if not path.is_dir():
        return f"hub:{spec.name}@{spec.revision or 'main'}"
    return f"local:{files_digest(sorted(path.glob('*.safetensors')))}"
