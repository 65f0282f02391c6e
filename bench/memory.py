"""The memory estimate (``workers.estimate``) against the measured peak of real training steps.

Each setting is a scaled-down GPT-NeoX or Llama (random weights, vocabularies large
enough that the logits matter) trained for a few steps on CPU, on random token ids: DPO
micro-batches (chosen and rejected rows in one forward, right-padded as the loop's
collation pads them), two micro-batches per optimizer step so the gradients of the first
are alive in the backward of the second, as in the loop. Most settings are float32
(32-true); a few run bf16-true and bf16-mixed (CPU autocast), slowly but with the same
saved tensors. The peak is the training process's peak RSS (VmHWM) minus its RSS just
before the model is built, in a fresh process per setting; a tiny model of the same
architecture trains first through the same code, so the kernels' code pages that torch
maps in on first use are already there (they are the library's memory, not the trial's).

glibc would keep some freed tensors' pages (its mmap threshold grows as big blocks are
freed), which would add the allocator's history to the peak; a fixed threshold
(``MALLOC_MMAP_THRESHOLD_``) returns every large tensor to the system when it is freed, so
RSS follows the live tensors, as ``torch.cuda.max_memory_allocated`` does on a GPU.

    python -m bench.memory
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from bench.common import WORK, quiet_offline, run_isolated, write_result
from workers.precision import BF16_MIXED, BF16_TRUE, TRUE_32

TOLERANCE = 0.25  # |estimate - measured| / measured, on every setting
STEPS = 2  # AdamW's states exist from the first step on: the second step is the peak
MICRO_BATCHES = 2
MMAP_THRESHOLD = str(1 << 16)

NEOX = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 384, "intermediate_size": 1536,
        "num_attention_heads": 6, "num_hidden_layers": 6, "vocab_size": 16384, "max_position_embeddings": 2048,
        "rotary_pct": 0.25, "use_parallel_residual": True, "tie_word_embeddings": False}
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 384, "intermediate_size": 1024,
         "num_attention_heads": 6, "num_key_value_heads": 2, "num_hidden_layers": 6, "vocab_size": 32000,
         "max_position_embeddings": 4096, "tie_word_embeddings": False}
LORA = {"neox": {"r": 16, "alpha": 32, "dropout": 0.05, "targets": ["query_key_value"]},
        "llama": {"r": 16, "alpha": 32, "dropout": 0.05, "targets": ["q_proj", "v_proj"]}}
# name: (architecture, micro-batch in pairs, max_len, gradient checkpointing, LoRA, precision)
SETTINGS = {
    "neox-mb1-T256": ("neox", 1, 256, False, False, TRUE_32),
    "neox-mb4-T256": ("neox", 4, 256, False, False, TRUE_32),
    "neox-mb2-T1024": ("neox", 2, 1024, False, False, TRUE_32),
    "neox-mb4-T512": ("neox", 4, 512, False, False, TRUE_32),
    "neox-mb4-T512-gc": ("neox", 4, 512, True, False, TRUE_32),
    "neox-mb4-T512-lora": ("neox", 4, 512, False, True, TRUE_32),
    "llama-mb2-T256": ("llama", 2, 256, False, False, TRUE_32),
    "llama-mb2-T1024": ("llama", 2, 1024, False, False, TRUE_32),
    "llama-mb2-T512": ("llama", 2, 512, False, False, TRUE_32),
    "llama-mb2-T512-gc": ("llama", 2, 512, True, False, TRUE_32),
    "llama-mb4-T512-lora": ("llama", 4, 512, False, True, TRUE_32),
    "llama-mb4-T1024-lora-gc": ("llama", 4, 1024, True, True, TRUE_32),
    "neox-mb2-T512-bf16-true": ("neox", 2, 512, False, False, BF16_TRUE),
    "llama-mb2-T256-lora-bf16-true": ("llama", 2, 256, False, True, BF16_TRUE),
    "llama-mb2-T512-lora-gc-bf16-true": ("llama", 2, 512, True, True, BF16_TRUE),
    "llama-mb2-T256-bf16-mixed": ("llama", 2, 256, False, False, BF16_MIXED),
    "neox-mb2-T512-lora-bf16-mixed": ("neox", 2, 512, False, True, BF16_MIXED),
}


def trial_for(name: str) -> dict:
    """The setting as a trial config (a plain dict): the model is a folder with its config.json."""
    arch, micro, max_len, gc, lora, precision = SETTINGS[name]
    folder = WORK / "memory" / arch
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(NEOX if arch == "neox" else LLAMA, indent=1))
    return {"model": {"name": str(folder), "lora": LORA[arch] if lora else None},
            "data": {"max_len": max_len},
            "train": {"batch_size": MICRO_BATCHES * micro, "micro_batch_size": micro, "gradient_checkpointing": gc,
                      "precision": precision, "lam": 0.5}}


def _rss_kb(field: str) -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith(f"{field}:")))


def _pair_batch(micro: int, max_len: int, vocab: int, generator) -> dict:
    """micro pairs, chosen rows then rejected rows, right-padded to the longest (one row is
    max_len long); the response is the second half of each row."""
    import torch

    rows = 2 * micro
    lengths = torch.randint(max_len // 2, max_len + 1, (rows,), generator=generator)
    lengths[0] = max_len
    positions = torch.arange(max_len)
    attention = (positions < lengths[:, None]).long()
    ids = torch.randint(0, vocab, (rows, max_len), generator=generator) * attention
    loss_mask = attention * (positions >= lengths[:, None] // 2).long()
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask,
            "ref_chosen": -torch.rand(micro, generator=generator) * 50, "ref_rejected": -torch.rand(micro, generator=generator) * 50}


def _train(cfg, config, batches: list[dict]) -> None:
    """The loop's memory-relevant path: model (+ LoRA, checkpointing), AdamW, steps of
    micro-batches through the chunked LM head, each backward adding to the gradients."""
    import torch
    from transformers import AutoModelForCausalLM

    from workers.forward import pair_logps
    from workers.losses import dpo_loss
    from workers.model import add_lora, enable_checkpointing, make_optimizer
    from workers.precision import autocast, weights_dtype

    t = cfg.train
    cpu = torch.device("cpu")
    model = AutoModelForCausalLM.from_config(config, dtype=weights_dtype(t.precision))
    model.config.use_cache = False
    if cfg.model.lora is not None:
        model = add_lora(model, cfg.model)
    if t.gradient_checkpointing:
        enable_checkpointing(model)
    model.train()
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], t, cpu)
    for step in range(len(batches) // MICRO_BATCHES):
        for batch in batches[step * MICRO_BATCHES:(step + 1) * MICRO_BATCHES]:
            with autocast(t.precision, cpu):
                chosen, rejected = pair_logps(model, batch)
                loss = dpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], t.beta)[0].sum() / t.batch_size
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def measure(raw: dict) -> dict:
    """Child side: a few training steps of the setting, after a tiny model's; the peak RSS
    above the RSS before the model is built."""
    import gc

    import torch
    from transformers import AutoConfig

    from workers.config import TrialConfig

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = TrialConfig.model_validate(raw)
    config = AutoConfig.from_pretrained(cfg.model.name)
    generator = torch.Generator().manual_seed(0)
    tiny = AutoConfig.from_pretrained(cfg.model.name, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, head_dim=32, vocab_size=512)
    _train(cfg, tiny, [_pair_batch(2, 64, 512, generator) for _ in range(2 * MICRO_BATCHES)])
    batches = [_pair_batch(cfg.train.micro_batch, cfg.data.max_len, config.vocab_size, generator)
               for _ in range(STEPS * MICRO_BATCHES)]
    gc.collect()
    torch.manual_seed(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
    before_kb = _rss_kb("VmRSS")
    started = time.perf_counter()
    _train(cfg, config, batches)
    return {"measured": (_rss_kb("VmHWM") - before_kb) * 1024, "steps_s": time.perf_counter() - started}


def main() -> int:
    quiet_offline()
    os.environ["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD  # read by each fresh child at its start
    from workers.config import TrialConfig
    from workers.estimate import estimate

    rows = []
    for i, name in enumerate(SETTINGS, 1):
        raw = trial_for(name)
        e = estimate(TrialConfig.model_validate(raw), device="cpu")
        got = run_isolated(measure, raw)
        error = e.total / got["measured"] - 1
        rows.append({"setting": name, "estimate": e.total, "parts": e.parts(), "params": e.shape.params_total,
                     "trainable": e.shape.params_trainable, **got, "error": error, "within": abs(error) <= TOLERANCE})
        print(f"[{i}/{len(SETTINGS)}] {name}: estimate {e.total / 2**20:.0f} MiB, measured {got['measured'] / 2**20:.0f} MiB "
              f"({100 * error:+.1f} %) in {got['steps_s']:.0f} s", flush=True)
    write_result("memory", {"tolerance": TOLERANCE, "steps": STEPS, "micro_batches": MICRO_BATCHES, "settings": SETTINGS,
                            "models": {"neox": NEOX, "llama": LLAMA}, "lora": LORA, "rows": rows},
                 "python -m bench.memory")
    missed = [r["setting"] for r in rows if not r["within"]]
    print(f"estimate off by more than {TOLERANCE:.0%} on: {', '.join(missed)}" if missed else
          f"estimate within {TOLERANCE:.0%} on all {len(rows)} settings", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
