"""The GPU check: the presets' models at the presets' shapes, on whatever GPU is here.

    python -m bench.gpu            # one GPU, no download: under 8 minutes on an H100
    python -m bench.gpu --tiny     # the same code on CPU with scaled-down models (the test suite)

For Pythia-1B and Llama-3-8B (random weights from the shipped ``config.json``, random
token ids; the numbers do not depend on what the weights are), a few hundred optimizer
steps of each objective through the loop's own micro-batch and update code, at the
preset's precision, LoRA, batch, micro-batch, max_len and checkpointing. It measures:

- tokens/s and model FLOPs utilisation: achieved model FLOP/s ÷ the GPU's peak dense
  bf16 FLOP/s (none on an unknown GPU or a CPU). Model FLOPs per token are 2·N forward
  (N: the non-embedding weights, the LM head included) plus 2·L·T·H for causal attention;
  training is 3× forward with all weights trained, 2× with LoRA (frozen weights get no
  weight gradient). Recomputation (checkpointing) is not model FLOPs.
- peak GPU memory (``max_memory_allocated``) against ``rightsweep estimate``'s figure;
- a DPO step with cached reference log-probs against one that runs the reference forward
  (adapters disabled with LoRA, as peers do) on the same batch.

Writes ``bench/results/gpu.json`` (``--out`` elsewhere); ``python -m bench.render`` puts it
in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

PRESETS = {"pythia-1b": "EleutherAI/pythia-1b", "llama3-8b-lora": "meta-llama/Meta-Llama-3-8B"}
# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, by a substring of the device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}
TINY_SHAPES = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "vocab_size": 512}
STEP_BUDGET_S = 60  # per model and objective (--budget): the whole check stays under 8 minutes


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def load_preset(preset: str, tiny: bool):
    """The preset's experiment config and its model's config (the shipped ``config.json``;
    scaled down with ``tiny``: same code, seconds on a CPU)."""
    from orchestrator.config import load_config
    from workers.estimate import model_config

    overrides = ["storage=/tmp/rightsweep-gpu-check"]
    if tiny:
        overrides += ["trial.data.max_len=32", "trial.train.batch_size=4", "trial.train.micro_batch_size=2",
                      "trial.train.precision=32-true"]
    cfg = load_config(preset, overrides)
    config = model_config(cfg.trial.model)
    if tiny:
        for k, v in TINY_SHAPES.items():
            if hasattr(config, k):
                setattr(config, k, v)
    return cfg, config


def build(cfg, config, device: torch.device):
    from transformers import AutoModelForCausalLM

    from workers.model import add_lora, enable_checkpointing, make_lr_scheduler, make_optimizer
    from workers.precision import grad_scaler, weights_dtype

    t = cfg.trial.train
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=weights_dtype(t.precision))
    model.config.use_cache = False
    if cfg.trial.model.lora is not None:
        model = add_lora(model, cfg.trial.model)
    if t.gradient_checkpointing:
        enable_checkpointing(model)
    model.train()
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], t, device)
    return model, optimizer, grad_scaler(t.precision, device), make_lr_scheduler(optimizer, t)


def random_batch(name: str, rows: int, length: int, vocab: int, generator: torch.Generator) -> dict:
    """Full-length rows (the worst case the preset allows): a prompt of the first 40 %,
    then the response the loss is on. Pairs are chosen rows then rejected rows."""
    n = 2 * rows if name == "dpo" else rows
    ids = torch.randint(0, vocab, (n, length), generator=generator)
    loss_mask = torch.zeros(n, length, dtype=torch.long)
    loss_mask[:, int(0.4 * length):] = 1
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": loss_mask}
    if name == "dpo":
        batch["ref_chosen"] = -torch.rand(rows, generator=generator) * length
        batch["ref_rejected"] = -torch.rand(rows, generator=generator) * length
    return batch


def model_flops_per_token(model, config, length: int, lora: bool) -> float:
    embeddings = model.get_input_embeddings().weight.numel()
    weights = sum(p.numel() for p in model.parameters()) - embeddings
    if lora:  # adapters are a rounding error next to the base; count the base's weights
        weights = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n) - embeddings
    forward = 2 * weights + 2 * config.num_hidden_layers * length * config.hidden_size
    return (2 if lora else 3) * forward


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_objective(name: str, cfg, parts, config, device, steps: int, budget_s: float) -> dict:
    from workers.loop import objective_pass, optimizer_step

    model, optimizer, scaler, lr_scheduler = parts
    t = cfg.trial.train
    g = torch.Generator().manual_seed(1)
    batches = [random_batch(name, t.batch_size, cfg.trial.data.max_len, config.vocab_size, g) for _ in range(4)]

    def step(i: int) -> None:
        def backward(share, last):
            scaler.scale(share).backward()

        objective_pass(name, model, batches[i % len(batches)], t, device, backward)
        optimizer_step(model, optimizer, scaler, lr_scheduler, t.max_grad_norm)

    for i in range(2):  # warm-up: kernels chosen, allocator grown
        step(i)
    sync(device)
    done, started = 0, time.perf_counter()
    while done < steps and time.perf_counter() - started < budget_s:
        step(done)
        done += 1
    sync(device)
    seconds = time.perf_counter() - started
    tokens_per_s = done * int(batches[0]["attention_mask"].sum()) / seconds  # every batch is full-length
    flops = model_flops_per_token(model, config, cfg.trial.data.max_len, cfg.trial.model.lora is not None) * tokens_per_s
    peak = peak_flops(device)
    return {"steps": done, "seconds": round(seconds, 3), "step_s": seconds / max(done, 1), "tokens_per_s": tokens_per_s,
            "model_tflops_per_s": flops / 1e12, "mfu": flops / peak if peak else None}


def reference_step_ratio(cfg, parts, config, device, steps: int) -> dict:
    """A DPO step with cached reference log-probs against one that computes them with a
    no-grad forward of the base (adapters off) on the same batch first."""
    import contextlib

    from workers.data import micro_batches
    from workers.forward import pair_logps
    from workers.loop import objective_pass, optimizer_step
    from workers.precision import autocast

    model, optimizer, scaler, lr_scheduler = parts
    t = cfg.trial.train
    batch = random_batch("dpo", t.batch_size, cfg.trial.data.max_len, config.vocab_size, torch.Generator().manual_seed(2))

    def step(live: bool) -> None:
        if live:
            disable = getattr(model, "disable_adapter", None)
            with torch.no_grad(), (disable() if disable else contextlib.nullcontext()), autocast(t.precision, device):
                # one micro-batch at a time, as the policy's pass
                refs = [pair_logps(model, {k: v.to(device) for k, v in piece.items()})
                        for piece in micro_batches(batch, t.micro_batch, pairs=True)]
                batch["ref_chosen"] = torch.cat([c for c, _ in refs]).float().cpu()
                batch["ref_rejected"] = torch.cat([r for _, r in refs]).float().cpu()
        objective_pass("dpo", model, batch, t, device, lambda share, last: scaler.scale(share).backward())
        optimizer_step(model, optimizer, scaler, lr_scheduler, t.max_grad_norm)

    times = {}
    for live in (False, True):
        step(live)
        sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            step(live)
        sync(device)
        times["live" if live else "cached"] = (time.perf_counter() - started) / steps
    return {"cached_step_s": times["cached"], "live_step_s": times["live"], "ratio": times["cached"] / times["live"],
            "steps": steps}


def peak_memory(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def check_preset(preset: str, tiny: bool, steps: int, budget_s: float, device: torch.device) -> dict:
    from workers.estimate import estimate

    cfg, config = load_preset(preset, tiny)
    t = cfg.trial.train
    print(f"{preset}: {type(config).__name__} {config.num_hidden_layers} layers × {config.hidden_size}, "
          f"precision {t.precision}, LoRA {cfg.trial.model.lora is not None}, batch {t.batch_size}, micro {t.micro_batch}, "
          f"max_len {cfg.trial.data.max_len}, checkpointing {t.gradient_checkpointing}", flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    parts = build(cfg, config, device)
    out = {"model": config.model_type, "settings": {"precision": t.precision, "lora": cfg.trial.model.lora is not None,
           "batch_size": t.batch_size, "micro_batch_size": t.micro_batch, "max_len": cfg.trial.data.max_len,
           "gradient_checkpointing": t.gradient_checkpointing}}
    for name in ("sft", "dpo"):
        out[name] = run_objective(name, cfg, parts, config, device, steps, budget_s)
        o = out[name]
        mfu = f", MFU {o['mfu']:.1%}" if o["mfu"] is not None else ""
        print(f"  {name}: {o['steps']} steps, {o['tokens_per_s']:.0f} tokens/s, "
              f"{o['model_tflops_per_s']:.2f} model TFLOP/s{mfu}", flush=True)
    peak = peak_memory(device)
    if not tiny:
        est = estimate(cfg.trial, num_workers=1)
        allocated = est.total - est.overhead  # max_memory_allocated does not see the CUDA context
        out["memory"] = {"measured_gb": peak / 1e9 if peak else None, "estimate_gb": allocated / 1e9,
                         "ratio": (allocated / peak) if peak else None}
        print(f"  peak memory {out['memory']['measured_gb']}, estimate {out['memory']['estimate_gb']:.2f} GB", flush=True)
    out["reference"] = reference_step_ratio(cfg, parts, config, device, max(2, steps // 10))
    print(f"  DPO step cached ÷ live reference: {out['reference']['ratio']:.3f}", flush=True)
    del parts
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    from bench.common import RESULTS, machine, quiet_offline

    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="scaled-down models on CPU: checks the code, measures nothing")
    ap.add_argument("--steps", type=int, help="optimizer steps per objective (default 200; 3 with --tiny)")
    ap.add_argument("--budget", type=float, default=STEP_BUDGET_S,
                    help=f"seconds per preset and objective at most (default {STEP_BUDGET_S})")
    ap.add_argument("--out", help="result file (default bench/results/gpu.json)")
    args = ap.parse_args(argv)
    quiet_offline()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type != "cuda" and not args.tiny:
        print("python -m bench.gpu: no GPU here; --tiny runs the same code on CPU", flush=True)
        return 2
    steps = args.steps or (3 if args.tiny else 200)
    started = time.perf_counter()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    out = Path(args.out) if args.out else RESULTS / "gpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine(), "command": "python -m bench.gpu" + (" --tiny" if args.tiny else ""), "device": gpu,
            "tiny": args.tiny, "seconds": 0.0, "presets": {}}
    for name in PRESETS:  # written after each preset: a check cut short keeps what it measured
        data["presets"][name] = check_preset(name, args.tiny, steps, args.budget, device)
        data["seconds"] = time.perf_counter() - started
        out.write_text(json.dumps(data, indent=1))
    print(f"wrote {out} in {data['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
