"""Peak memory of one training process, from the config alone: before anything starts.

The model's shape comes from its config (no weights): it is built on the meta device,
with its LoRA adapters, so the parameter counts are exact. The rest is arithmetic on
what the loop keeps alive at its peak, the backward of the last micro-batch of a step:

- weights, and under mixed precision autocast's half-precision copies of them;
- gradients of the trainable parameters (a micro-batch's backward adds to the previous
  ones'), and under DDP its bucket buffers, about one more copy;
- AdamW's two states per trainable parameter, in the parameter's dtype;
- activations: what autograd saved in the forward of one micro-batch (one graph is alive
  at a time), counted per token and layer below from what transformers' GPT-NeoX and
  Llama layers save (measured with ``saved_tensors_hooks``: tests/workers/test_estimate.py);
- logits: the LM head's largest chunk and its gradients (``workers.forward``).

``bench/memory.py`` checks it against the measured peak of real training steps.
Pure: torch, transformers and peft, no Ray.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workers.config import EMBEDDED, ConfigError, ModelSpec, TrialConfig
from workers.losses import CHUNK_ELEMENTS
from workers.precision import BF16_MIXED, BF16_TRUE, FP16_MIXED, TRUE_32, weights_dtype
from workers.schedules import MIX

SHIPPED = Path(__file__).parent / "assets" / "model_configs"  # <org>--<name>/config.json: the presets' models, offline
GB = 1e9
# What a CUDA training process holds beyond its tensors: the CUDA context, cuBLAS
# workspaces and the caching allocator's slack. Not measured here (no GPU); a common
# figure, kept fixed so that a small model's estimate is not all overhead.
CUDA_OVERHEAD = int(1.0 * GB)
# Architectures whose layers were traced (the per-layer recipes below); any other is
# estimated with the Llama recipe and said to be approximate.
TRACED = ("gpt_neox", "llama")
MIXED = (BF16_MIXED, FP16_MIXED)


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model: its dimensions and exact parameter counts."""

    name: str
    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    params_total: int
    params_trainable: int
    lora_params: int  # the adapters' parameters (float32 whatever the base's dtype)
    linear_params: int  # weights of the blocks' linear layers (what autocast casts)
    head_params: int  # the LM head's weight (cast too; the embedding is not)
    head_trainable: bool
    adapted: frozenset[str] = field(default_factory=frozenset)  # LoRA-adapted linears of a block, by short name


@dataclass(frozen=True)
class Estimate:
    """Bytes of one training process at its peak, by part, and what they assumed."""

    weights: int
    weight_copies: int  # autocast's half-precision copies of the weights (mixed precision only)
    gradients: int
    ddp_buckets: int  # DDP's gradient buckets (num_workers > 1)
    optimizer: int
    activations: int  # kept through the backward: every block's, or with checkpointing each block's input
    recompute: int  # with checkpointing, one block's activations rebuilt in backward
    logits: int
    overhead: int  # CUDA context and allocator slack (0 for a CPU process)
    shape: ModelShape
    precision: str
    lora: str | None
    micro_batch: int
    rows: int  # sequences per forward: 2 x micro_batch with DPO pairs
    max_len: int
    gradient_checkpointing: bool
    num_workers: int

    PARTS = ("weights", "weight_copies", "gradients", "ddp_buckets", "optimizer", "activations", "recompute", "logits",
             "overhead")

    def parts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.PARTS}

    @property
    def total(self) -> int:
        """The peak: a recomputed block and the head's chunk are never alive together."""
        return sum(self.parts().values()) - min(self.recompute, self.logits)

    @property
    def approximate(self) -> bool:
        return self.shape.model_type not in TRACED


def model_config(spec: ModelSpec):
    """The model's transformers config, without its weights: shipped with rightsweep for the
    presets' models, the embedded recipe, a local folder's config.json, else the hub."""
    from transformers import AutoConfig

    shipped = SHIPPED / spec.name.replace("/", "--")
    if "/" in spec.name and (shipped / "config.json").is_file():
        return AutoConfig.from_pretrained(shipped)
    if spec.name == EMBEDDED:
        from workers.embedded import RECIPE, tiny_config

        return tiny_config(RECIPE["vocab_size"], 0)  # the tokenizer's size is at most the recipe's
    local = Path(spec.name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ConfigError(f"trial.model.name: {local} has no config.json; the memory estimate needs the model's config")
        return AutoConfig.from_pretrained(local, trust_remote_code=spec.trust_remote_code)
    hub = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    try:  # the Hugging Face cache first: offline, the hub's retries take half a minute to fail
        return AutoConfig.from_pretrained(spec.name, local_files_only=True, **hub)
    except (OSError, ValueError):
        pass
    try:
        return AutoConfig.from_pretrained(spec.name, **hub)
    except (OSError, ValueError) as e:
        raise ConfigError(f"trial.model.name: no config for {spec.name!r} to estimate its memory from: it is not one "
                          f"shipped with rightsweep ({', '.join(shipped_models())}), and reading it from the hub needs "
                          f"network access ({type(e).__name__}); give a local folder with its config.json") from None


def shipped_models() -> list[str]:
    return sorted(p.name.replace("--", "/", 1) for p in SHIPPED.iterdir() if (p / "config.json").is_file())


def model_shape(spec: ModelSpec) -> ModelShape:
    return _model_shape(spec.model_dump_json())


@functools.lru_cache(maxsize=16)
def _model_shape(spec_json: str) -> ModelShape:
    """Built on the meta device (no memory, no weights), adapters and all, for exact counts."""
    from transformers import AutoModelForCausalLM

    from workers.model import add_lora

    spec = ModelSpec.model_validate_json(spec_json)
    cfg = model_config(spec)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft asks transformers a deprecated question
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=spec.trust_remote_code)
        if spec.lora is not None:
            model = add_lora(model, spec)
    params = list(model.parameters())
    block = _first_block(model, cfg.num_hidden_layers)
    adapted = frozenset(n.rsplit(".", 1)[-1] for n, m in block.named_modules() if hasattr(m, "lora_A"))
    linears = sum(m.weight.numel() for n, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}." and "lora_" not in n)
    heads, head = cfg.num_attention_heads, model.get_output_embeddings().weight
    return ModelShape(
        name=spec.name, model_type=cfg.model_type, hidden=cfg.hidden_size,
        intermediate=getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size,
        layers=cfg.num_hidden_layers, heads=heads, kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads, vocab=cfg.vocab_size,
        params_total=sum(p.numel() for p in params), params_trainable=sum(p.numel() for p in params if p.requires_grad),
        lora_params=sum(p.numel() for n, p in model.named_parameters() if "lora_" in n),
        linear_params=linears, head_params=head.numel(), head_trainable=head.requires_grad, adapted=adapted,
    )


def _first_block(model: torch.nn.Module, layers: int) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers:
            return module[0]
    raise ConfigError(f"trial.model.name: found no stack of {layers} layers in {type(model).__name__}")


class _Saved:
    """The tensors autograd keeps for one token of one layer, by name: a tensor that two
    ops save (a linear's input that is also a norm's output) counts once."""

    def __init__(self, precision: str, full: bool, shape: ModelShape, lora_r: int, lora_dropout: float, device: str):
        self.c = 4 if precision == TRUE_32 else 2  # what matmuls output (the compute dtype)
        # The residual stream: float32 under mixed precision too (the embedding is not
        # autocast, and float32 + bfloat16 is float32).
        self.r = 2 if precision == BF16_TRUE else 4
        self.mixed = precision in MIXED
        # peft casts lora_A's input to the adapter's float32 under bf16-true; autocast casts it to bf16.
        self.lora_in = 4 if precision == BF16_TRUE else self.c
        self.cuda = device == "cuda"
        self.full, self.adapted, self.lora_r, self.dropout = full, shape.adapted, lora_r, lora_dropout
        self.bytes: dict[str, float] = {}

    def keep(self, name: str, width: float, nbytes: float) -> None:
        self.bytes[name] = width * nbytes

    def linear_input(self, linear: str, tensor: str, width: int, from_float32: bool) -> None:
        """What a linear keeps of its input. Its weight's gradient needs the input: under
        autocast a float32 input (a norm's output) is cast once per linear, so each keeps its
        own copy. A frozen weight needs none of it, but its LoRA adapter keeps lora_A's input
        (peft's dropout output and mask, or a cast copy) and lora_B's (rank-wide)."""
        if self.full:
            self.keep(f"{linear}.input" if self.mixed and from_float32 else tensor, width, self.c)
        elif linear in self.adapted:
            if self.dropout > 0:
                # Dropout keeps its mask: a bool on CUDA (native_dropout); on CPU the scaled
                # noise it multiplies by, in its input's dtype.
                mask = 1 if self.cuda else 2 if self.mixed and not from_float32 else 4
                self.keep(f"{linear}.lora_dropout", width, self.lora_in + mask)
            else:
                shared = self.lora_in == self.c and not self.mixed
                self.keep(tensor if shared else f"{linear}.lora_input", width, self.lora_in)
            self.keep(f"{linear}.lora_B_input", self.lora_r, self.lora_in)

    @property
    def total(self) -> float:
        return sum(self.bytes.values())


def _gpt_neox_layer(s: _Saved, m: ModelShape, seq: int) -> None:
    """GPTNeoXLayer (parallel residual), traced: both norms read the same input."""
    h, i, q = m.hidden, m.intermediate, m.heads * m.head_dim
    s.keep("x", h, s.r)
    s.keep("norm_stats", 4, 4)  # each LayerNorm's mean and 1/std
    s.linear_input("query_key_value", "ln1_out", h, from_float32=True)
    s.keep("qkv", 3 * q, s.c)  # the fused output: attention keeps a view of it (v), so all of it
    s.keep("q_k_rotated", 2 * q, s.c)
    s.keep("attention_out", q, s.c)
    s.linear_input("dense", "attention_out_copy", q, from_float32=False)  # a contiguous copy of it
    s.linear_input("dense_h_to_4h", "ln2_out", h, from_float32=True)
    s.keep("gelu_in", i, s.c)
    s.linear_input("dense_4h_to_h", "gelu_out", i, from_float32=False)
    _attention_extras(s, m, seq)


def _llama_layer(s: _Saved, m: ModelShape, seq: int) -> None:
    """LlamaDecoderLayer, traced. RMSNorm keeps a float32 copy of its input whatever the
    dtype, and its normalised input when its weight trains. With a padding mask,
    transformers repeats the key/value heads to all heads before attention."""
    h, i, q = m.hidden, m.intermediate, m.heads * m.head_dim
    for norm, linears, out in (("norm1", ("q_proj", "k_proj", "v_proj"), "norm1_out"),
                               ("norm2", ("gate_proj", "up_proj"), "norm2_out")):
        s.keep(f"{norm}.x_float32", h, 4)
        s.keep(f"{norm}.rsqrt", 1, 4)
        if s.full:
            s.keep(f"{norm}.normalized", h, s.r)
        for linear in linears:
            s.linear_input(linear, out, h, from_float32=True)
        if norm == "norm1":
            s.keep("q", q, s.c)
            s.keep("k_repeated", q, s.c)
            s.keep("v_repeated", q, s.c)
            s.keep("attention_out", q, s.c)
            s.linear_input("o_proj", "attention_out", q, from_float32=False)  # the same tensor
    s.keep("gate_out", i, s.c)  # silu's input
    s.keep("up_out", i, s.c)
    s.keep("silu_out", i, s.c)
    s.linear_input("down_proj", "silu_x_up", i, from_float32=False)
    _attention_extras(s, m, seq)


def _attention_extras(s: _Saved, m: ModelShape, seq: int) -> None:
    # SDPA turns the boolean padding mask into an additive one of the query's dtype, per
    # layer, and keeps it: [rows, 1, T, T], so T per token. Its log-sum-exp: one per head.
    s.keep("mask", seq, s.c)
    s.keep("lse", m.heads, 4)


LAYERS = {"gpt_neox": _gpt_neox_layer, "llama": _llama_layer}


def layer_bytes_per_token(shape: ModelShape, trial: TrialConfig, seq: int, device: str = "cuda") -> float:
    """Bytes autograd keeps per token in one block's forward (besides autocast's weight copies)."""
    lora = trial.model.lora
    s = _Saved(trial.train.precision, lora is None, shape, lora.r if lora else 0, lora.dropout if lora else 0.0, device)
    LAYERS.get(shape.model_type, _llama_layer)(s, shape, seq)
    return s.total


def outside_bytes_per_token(shape: ModelShape, trial: TrialConfig) -> float:
    """Outside the blocks, kept through the backward: the final norm (as a block's norm
    keeps it), its output as the head's input (``workers.forward`` flattens a copy of it),
    the boolean [rows, 1, T, T] padding mask every block reads, the embedding's token ids."""
    r = 2 if trial.train.precision == BF16_TRUE else 4
    if shape.model_type == "gpt_neox":
        norm = r * shape.hidden
    else:
        norm = 4 * shape.hidden + (r * shape.hidden if trial.model.lora is None else 0)
    return norm + r * shape.hidden + trial.data.max_len + 8


def logits_bytes(shape: ModelShape, precision: str, tokens: int) -> int:
    """The LM head's peak, at the start of backward. ``workers.forward`` applies the head a
    chunk of at most CHUNK_ELEMENTS logits at a time (recomputed in backward when there are
    several), so one chunk is alive: its float32 logits (the upcast, in half precision)
    and, in backward, three float32 gradients of them (log-sum-exp's, the gather's and
    their sum): 16 bytes a logit, measured in float32 and bf16. Besides: the gradient of
    the final hidden states, twice (the flattened positions', and the unshifted [B, T, H]
    one it is scattered into), and a recomputed chunk's fresh gradient of a trainable
    head's weight."""
    per_chunk = max(CHUNK_ELEMENTS // shape.vocab, 1)
    chunk = min(tokens, per_chunk) * shape.vocab
    weight_bytes = torch.finfo(weights_dtype(precision)).bits // 8
    residual = 2 if precision == BF16_TRUE else 4
    hidden_grads = 2 * tokens * shape.hidden * residual
    head_grad = shape.vocab * shape.hidden * weight_bytes if shape.head_trainable and tokens > per_chunk else 0
    return 16 * chunk + hidden_grads + head_grad


def rows_per_forward(trial: TrialConfig, micro_batch: int) -> int:
    """A DPO micro-batch of n pairs is one forward of 2n sequences; a schedule that never
    steps DPO (λ = 0 and not Mix) has only SFT's n."""
    t = trial.train
    sft_only = t.lam == 0 and t.schedule != MIX
    return micro_batch if sft_only else 2 * micro_batch


def estimate(trial: TrialConfig, num_workers: int = 1, micro_batch: int | None = None, device: str = "cuda") -> Estimate:
    """Peak bytes of one training process of ``trial`` (at ``micro_batch``, default the config's)."""
    shape = model_shape(trial.model)
    t, lora = trial.train, trial.model.lora
    micro = micro_batch or t.micro_batch
    rows, seq = rows_per_forward(trial, micro), trial.data.max_len
    tokens = rows * seq
    base_bytes = torch.finfo(weights_dtype(t.precision)).bits // 8
    # peft keeps the adapters float32; the base (or every weight, without LoRA) is in weights_dtype.
    weights = (shape.params_total - shape.lora_params) * base_bytes + shape.lora_params * 4
    trainable_bytes = 4 if lora is not None else base_bytes
    grads = shape.params_trainable * trainable_bytes
    # Autocast casts each linear's weight (the head's too) to half precision for its
    # matmul, and the matmul keeps the copy for backward (a trainable weight's copy is also
    # cached until autocast exits): all of them with the whole graph alive, one block's
    # with checkpointing (a frozen weight is cast again in the recompute; a trainable one
    # stays cached).
    copies = 0
    if t.precision in MIXED:
        blocks = shape.linear_params / shape.layers if lora is not None and t.gradient_checkpointing else shape.linear_params
        copies = int(2 * (blocks + shape.head_params + shape.lora_params))
    layer = layer_bytes_per_token(shape, trial, seq, device)
    outside = outside_bytes_per_token(shape, trial)
    recompute = 0
    if t.gradient_checkpointing:
        # Each block keeps only its input; backward recomputes one block at a time, after
        # the head's backward (so the two peaks are not alive together).
        r = 2 if t.precision == BF16_TRUE else 4
        activations, recompute = tokens * (shape.layers * r * shape.hidden + outside), tokens * layer
    else:
        activations = tokens * (shape.layers * layer + outside)
    return Estimate(
        weights=int(weights), weight_copies=copies, gradients=int(grads),
        ddp_buckets=int(grads) if num_workers > 1 else 0, optimizer=int(2 * grads),
        activations=int(activations),
        recompute=int(recompute), logits=logits_bytes(shape, t.precision, tokens),
        overhead=CUDA_OVERHEAD if device == "cuda" else 0, shape=shape, precision=t.precision,
        lora=None if lora is None else f"r={lora.r} on {', '.join(lora.targets)}", micro_batch=micro, rows=rows,
        max_len=seq, gradient_checkpointing=t.gradient_checkpointing, num_workers=num_workers,
    )


def largest_micro_batch(trial: TrialConfig, gpu_memory_bytes: float, num_workers: int = 1, device: str = "cuda") -> int:
    """The largest micro_batch_size (at most batch_size) whose estimate fits, or 0 if even
    one row does not. The estimate grows with the micro-batch, so a bisection."""
    lo, hi = 0, trial.train.batch_size
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(trial, num_workers, micro_batch=mid, device=device).total <= gpu_memory_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def gb(nbytes: float) -> str:
    return f"{nbytes / GB:.2f}"


def describe(e: Estimate) -> list[str]:
    """The estimate as lines of text: the parts, the total and what it assumed."""
    s = e.shape
    labels = {"weights": "weights", "weight_copies": "autocast weight copies", "gradients": "gradients",
              "ddp_buckets": "DDP gradient buckets", "optimizer": "optimizer state (AdamW)",
              "activations": "activations", "recompute": "one block recomputed", "logits": "logits (LM head chunk)",
              "overhead": "CUDA context and allocator"}
    lines = ["memory estimate per training process (GB):"]
    lines += [f"  {labels[k]:<28}{gb(v):>9}" for k, v in e.parts().items() if v or k in ("gradients", "activations")]
    if e.recompute:
        lines.append("  (a recomputed block and the logits are never alive together: the total counts the larger)")
    lines.append(f"  {'total':<28}{gb(e.total):>9}")
    lines += [
        "assumed:",
        f"  model: {s.name} ({s.model_type}: {s.layers} layers, hidden {s.hidden}, vocab {s.vocab})"
        + ("; approximate: its layers were not traced, the Llama recipe is used" if e.approximate else ""),
        f"  parameters: {s.params_total:,} total, {s.params_trainable:,} trainable",
        f"  precision: {e.precision}; lora: {e.lora or 'none (full fine-tuning)'}",
        f"  micro-batch: {e.micro_batch} (SFT rows or DPO pairs: {e.rows} sequences per forward), max_len {e.max_len} "
        f"tokens; gradient checkpointing: {'on' if e.gradient_checkpointing else 'off'}; workers: {e.num_workers}",
    ]
    return lines
