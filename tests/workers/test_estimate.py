"""The memory estimate's pure parts, against hand counts and against what torch itself
keeps: parameter counts of real instances, bytes per precision, the per-layer recipes
against ``saved_tensors_hooks`` on real layers, the head's chunks, the bisection."""

import json

import pytest
import torch

from workers.config import ConfigError, ModelSpec, TrialConfig
from workers.estimate import (
    CUDA_OVERHEAD,
    estimate,
    largest_micro_batch,
    layer_bytes_per_token,
    logits_bytes,
    model_config,
    model_shape,
    outside_bytes_per_token,
    shipped_models,
)
from workers.losses import CHUNK_ELEMENTS

NEOX = {"model_type": "gpt_neox", "hidden_size": 128, "intermediate_size": 384, "num_attention_heads": 4,
        "num_hidden_layers": 2, "vocab_size": 1000, "rotary_pct": 0.25, "tie_word_embeddings": False}
LLAMA = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 320, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 1000, "tie_word_embeddings": False}
TARGETS = {"gpt_neox": ["query_key_value"], "llama": ["q_proj", "v_proj"]}


def folder(tmp_path, config: dict, layers: int | None = None) -> str:
    path = tmp_path / f"{config['model_type']}-{layers or config['num_hidden_layers']}"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps({**config, **({"num_hidden_layers": layers} if layers else {})}))
    return str(path)


def trial(name: str, lora: dict | None = None, **train) -> TrialConfig:
    return TrialConfig.model_validate({"model": {"name": name, "lora": lora}, "data": {"max_len": 64}, "train": train})


def real_model(t: TrialConfig):
    from transformers import AutoConfig, AutoModelForCausalLM

    from workers.model import add_lora
    from workers.precision import weights_dtype

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(t.model.name), dtype=weights_dtype(t.train.precision))
    model.config.use_cache = False
    return add_lora(model, t.model) if t.model.lora else model


@pytest.mark.parametrize("config", [NEOX, LLAMA], ids=["gpt_neox", "llama"])
@pytest.mark.parametrize("lora", [False, True])
def test_parameter_counts_are_those_of_a_real_instance(config, lora, tmp_path):
    t = trial(folder(tmp_path, config), {"r": 8, "targets": TARGETS[config["model_type"]]} if lora else None)
    model, shape = real_model(t), model_shape(t.model)
    assert shape.params_total == sum(p.numel() for p in model.parameters())
    assert shape.params_trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert shape.lora_params == (sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) if lora else 0)


def test_the_presets_models_counted_offline():
    """Pythia-1B: 1,011,781,632 parameters (its model card); LoRA r=32 on query_key_value adds
    16 layers x 32 x (2048 + 3 x 2048). Llama-3-8B: 8,030,261,248; r=16 on q_proj (4096 ->
    4096) and v_proj (4096 -> 1024) adds 32 x 16 x (8192 + 5120)."""
    pythia = model_shape(ModelSpec(name="EleutherAI/pythia-1b", lora={"r": 32, "targets": ["query_key_value"]}))
    assert pythia.params_total - pythia.lora_params == 1_011_781_632
    assert pythia.params_trainable == pythia.lora_params == 16 * 32 * (2048 + 3 * 2048)
    llama = model_shape(ModelSpec(name="meta-llama/Meta-Llama-3-8B", lora={"r": 16, "targets": ["q_proj", "v_proj"]}))
    assert llama.params_total - llama.lora_params == 8_030_261_248
    assert llama.params_trainable == 32 * 16 * (8192 + 5120)
    assert (llama.hidden, llama.intermediate, llama.layers, llama.heads, llama.kv_heads, llama.vocab) == (4096, 14336, 32, 32, 8, 128256)


def test_a_model_config_is_found_shipped_embedded_local_or_not_at_all(tmp_path, monkeypatch):
    import huggingface_hub.constants

    assert shipped_models() == ["EleutherAI/pythia-1b", "meta-llama/Meta-Llama-3-8B"]  # in the wheel too: pyproject
    assert model_config(ModelSpec(name="EleutherAI/pythia-1b")).vocab_size == 50304
    assert model_config(ModelSpec(name="embedded")).hidden_size == 64
    assert model_config(ModelSpec(name=folder(tmp_path, LLAMA))).num_key_value_heads == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        model_config(ModelSpec(name=str(tmp_path / "empty")))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as offline as the CI machine, without its retries
    with pytest.raises(ConfigError, match="not one shipped with rightsweep .* needs network access"):
        model_config(ModelSpec(name="acme/not-shipped"))


@pytest.mark.parametrize("precision,lora,weights,grad", [
    ("32-true", False, lambda p, a: 4 * p, lambda p, a: 4 * p),
    ("bf16-mixed", False, lambda p, a: 4 * p, lambda p, a: 4 * p),  # float32 master weights
    ("16-mixed", False, lambda p, a: 4 * p, lambda p, a: 4 * p),
    ("bf16-true", False, lambda p, a: 2 * p, lambda p, a: 2 * p),
    ("32-true", True, lambda p, a: 4 * p, lambda p, a: 4 * a),
    ("bf16-true", True, lambda p, a: 2 * (p - a) + 4 * a, lambda p, a: 4 * a),  # peft's adapters stay float32
    ("bf16-mixed", True, lambda p, a: 4 * p, lambda p, a: 4 * a),
])
def test_weights_gradients_and_adamw_state_by_hand(precision, lora, weights, grad, tmp_path):
    t = trial(folder(tmp_path, NEOX), {"r": 8} if lora else None, precision=precision)
    s = model_shape(t.model)
    p, a = s.params_total, s.lora_params
    e = estimate(t)
    assert (e.weights, e.gradients, e.optimizer) == (weights(p, a), grad(p, a), 2 * grad(p, a))
    assert e.ddp_buckets == 0 and estimate(t, num_workers=2).ddp_buckets == e.gradients
    # Autocast's bf16 copies: every linear weight of the blocks (4h² + 2hi a layer), the head's, the adapters'.
    linear = NEOX["num_hidden_layers"] * (4 * 128 * 128 + 2 * 128 * 384)
    assert (s.linear_params, s.head_params) == (linear, 1000 * 128)
    assert e.weight_copies == (2 * (linear + 1000 * 128 + a) if precision.endswith("mixed") else 0)
    assert e.overhead == CUDA_OVERHEAD and estimate(t, device="cpu").overhead == 0


def saved_per_token(t: TrialConfig, layers: int, tmp_path, rows=3, seq=64) -> tuple[float, int]:
    """What autograd keeps of one forward, per token (right padding, so the mask path), and
    autocast's weight copies apart: 2-D tensors without a token dimension."""
    from workers.precision import autocast

    t = t.model_copy(update={"model": t.model.model_copy(update={"name": folder(tmp_path, CONFIGS[t.model.name], layers)})})
    model = real_model(t).train()
    key = lambda x: x.untyped_storage().data_ptr()  # noqa: E731 (views of one storage count once)
    params = {key(p) for p in model.parameters()}
    saved, copies = {}, {}

    def pack(x):
        if key(x) not in params:
            (copies if x.dim() == 2 and x.shape[0] not in (rows, rows * seq) else saved)[key(x)] = x.untyped_storage().nbytes()
        return x

    ids, mask = torch.randint(0, 1000, (rows, seq)), torch.ones(rows, seq, dtype=torch.long)
    mask[1:, seq // 2:] = 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x), autocast(t.train.precision, torch.device("cpu")):
        model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
    return sum(saved.values()) / (rows * seq), sum(copies.values())


CONFIGS = {"gpt_neox": NEOX, "llama": LLAMA}


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
@pytest.mark.parametrize("precision", ["32-true", "bf16-true", "bf16-mixed"])
@pytest.mark.parametrize("lora", [None, 0.0, 0.05], ids=["full", "lora", "lora-dropout"])
def test_a_layers_activations_are_what_autograd_keeps(arch, precision, lora, tmp_path):
    """The recipe of a block, per token, against the bytes ``saved_tensors_hooks`` sees in a
    real forward on CPU: the difference between 4 and 2 layers is two blocks' worth."""
    spec = None if lora is None else {"r": 8, "dropout": lora, "targets": TARGETS[arch]}
    t = trial(arch, spec, precision=precision)
    (four, copies4), (two, copies2) = saved_per_token(t, 4, tmp_path), saved_per_token(t, 2, tmp_path)
    real = t.model_copy(update={"model": t.model.model_copy(update={"name": folder(tmp_path, CONFIGS[arch], 2)})})
    shape = model_shape(real.model)
    assert layer_bytes_per_token(shape, real, 64, device="cpu") == pytest.approx((four - two) / 2, rel=0.005)
    if precision == "bf16-mixed":
        assert (copies4 - copies2) / 2 == 2 * (shape.linear_params + shape.lora_params) / shape.layers


def test_dropout_keeps_a_bool_mask_on_cuda_and_its_scaled_noise_on_cpu(tmp_path):
    t = trial(folder(tmp_path, LLAMA), {"r": 8, "dropout": 0.1, "targets": ["q_proj", "v_proj"]})
    shape = model_shape(t.model)
    # Two adapters, each: the dropout output (float32) and the mask (bool, or float32 noise).
    assert layer_bytes_per_token(shape, t, 64, "cpu") - layer_bytes_per_token(shape, t, 64, "cuda") == 2 * 128 * (4 - 1)


def test_the_heads_chunk_by_hand(tmp_path):
    """16 bytes a logit of one chunk: float32 logits and three gradients of them. One chunk
    when all fit in CHUNK_ELEMENTS; else CHUNK_ELEMENTS // vocab positions, and a trainable
    head's weight gradient (vocab x hidden) besides. And twice the final hidden states'
    gradient (hidden 128, in the residual stream's dtype)."""
    full, lora = trial(folder(tmp_path, NEOX)), trial(folder(tmp_path, NEOX), {"r": 8})
    s, sl = model_shape(full.model), model_shape(lora.model)
    assert logits_bytes(s, "32-true", 100) == 16 * 100 * 1000 + 2 * 100 * 128 * 4
    per_chunk = CHUNK_ELEMENTS // 1000
    many = 10 * per_chunk
    assert logits_bytes(sl, "bf16-true", many) == 16 * per_chunk * 1000 + 2 * many * 128 * 2
    assert logits_bytes(s, "32-true", many) == 16 * per_chunk * 1000 + 2 * many * 128 * 4 + 4 * 1000 * 128
    assert logits_bytes(s, "bf16-true", many) == 16 * per_chunk * 1000 + 2 * many * 128 * 2 + 2 * 1000 * 128


def test_micro_batch_pairs_length_and_checkpointing_scale_the_activations(tmp_path):
    """DPO pairs: 2 sequences a pair (SFT alone: 1); every block's activations, or with
    checkpointing each block's input plus one block recomputed, never with the logits."""
    t = trial(folder(tmp_path, NEOX), micro_batch_size=2, batch_size=4)
    s = model_shape(t.model)
    layer, outside = layer_bytes_per_token(s, t, 64), outside_bytes_per_token(s, t)
    e = estimate(t)
    assert (e.rows, e.micro_batch) == (4, 2)
    assert e.activations == int(4 * 64 * (2 * layer + outside)) and e.recompute == 0
    assert estimate(t.model_copy(update={"train": t.train.model_copy(update={"lam": 0.0})})).rows == 2
    gc = t.model_copy(update={"train": t.train.model_copy(update={"gradient_checkpointing": True})})
    g = estimate(gc)
    assert g.activations == int(4 * 64 * (2 * 4 * 128 + outside)) and g.recompute == int(4 * 64 * layer)
    assert g.total == sum(g.parts().values()) - min(g.recompute, g.logits)
    assert estimate(t, micro_batch=1).activations < e.activations < estimate(t, micro_batch=4).activations


def test_largest_micro_batch_is_the_boundary_of_the_fit(tmp_path):
    t = trial(folder(tmp_path, NEOX), batch_size=16)
    totals = [estimate(t, micro_batch=m).total for m in range(1, 17)]
    assert totals == sorted(totals)
    assert largest_micro_batch(t, totals[6]) == 7
    assert largest_micro_batch(t, totals[6] - 1) == 6
    assert largest_micro_batch(t, totals[0] - 1) == 0
    assert largest_micro_batch(t, 10 * totals[-1]) == 16


def test_an_architecture_not_traced_is_estimated_and_said_to_be_approximate(tmp_path):
    """GPT-2's layers are not among the traced recipes: the Llama recipe stands in, flagged."""
    gpt2 = {"model_type": "gpt2", "n_embd": 128, "n_layer": 2, "n_head": 4, "vocab_size": 1000, "bos_token_id": 0,
            "eos_token_id": 0, "num_hidden_layers": 2}
    e = estimate(trial(folder(tmp_path, gpt2)))
    assert e.approximate and e.activations > 0 and not estimate(trial(folder(tmp_path, NEOX))).approximate
    assert e.shape.params_total == sum(p.numel() for p in real_model(trial(folder(tmp_path, gpt2))).parameters())
