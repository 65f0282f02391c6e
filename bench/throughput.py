"""§2, per-step figures: the loop (in-process, and inside a ``TorchTrainer`` worker) against
a bare PyTorch loop, and a DPO step with cached reference log-probs against one with a
live reference.

    python -m bench.throughput
"""

from __future__ import annotations

import statistics
import tempfile
import time

from bench.common import WORK, prepare_cache, quiet_offline, run_isolated, trial_config, write_result
from workers import metrics
from workers.schedules import ALRIGHT

STEPS = 600
REPS = 3
LAM = 0.5


def _trial(raw: dict):
    from workers.config import TrialConfig

    return TrialConfig.model_validate(raw)


def bare_loss(name: str, model, batch: dict, beta: float):
    """What a hand-written loop computes: the model's full logits, log-softmax, gather."""
    import torch
    import torch.nn.functional as F

    ids, mask = batch["input_ids"], batch["loss_mask"][:, 1:]
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    seq = (logps * mask).sum(-1)
    if name == "sft":
        return -seq.sum() / mask.sum()
    chosen, rejected = seq.chunk(2)
    return -F.logsigmoid(beta * ((chosen - rejected) - (batch["ref_chosen"] - batch["ref_rejected"]))).mean()


def _bare_loop(raw: dict, decisions: str, threads: int) -> dict:
    """The same model, batches and objective per step as the trial, with nothing around
    them but the loss, backward, clip and AdamW: what a hand-written loop would cost."""
    import torch

    from workers.data import BatchStream, collate_pairs, collate_sft
    from workers.inputs import load_inputs
    from workers.model import load_policy, make_optimizer

    torch.set_num_threads(threads)
    cfg = _trial(raw)
    t = cfg.train
    torch.manual_seed(t.seed)
    device = torch.device("cpu")
    inputs = load_inputs(cfg, device)
    pad = inputs.tokenizer.pad_token_id
    model = load_policy(cfg.model, cfg.cache_dir, device)
    model.train()
    opt = make_optimizer(model.parameters(), t, device)
    sft = BatchStream(inputs.sft_train, t.batch_size, t.seed, lambda r: collate_sft(r, pad))
    dpo = BatchStream(inputs.pref_train, t.batch_size, t.seed + 1, lambda r: collate_pairs(r, pad))
    started = time.perf_counter()
    for d in decisions:
        name, stream = ("sft", sft) if d == "S" else ("dpo", dpo)
        bare_loss(name, model, stream.next(), t.beta).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    return {"steps_per_s": len(decisions) / seconds, "seconds": seconds, "threads": torch.get_num_threads()}


def _dpo_step_blocks(raw: dict, blocks: int, steps: int) -> dict:
    """One process, one model, one stream of pair batches: blocks of the loop's own DPO
    step (``train_step``: micro-batches, the chunked head, scaler, LR scheduler) alternate
    with blocks of a bare step (full logits, log-softmax, backward, clip, AdamW), so the
    machine's drift hits both alike."""
    import torch

    from workers.config import TrialConfig
    from workers.loop import setup, train_step
    from workers.session import LocalSession

    cfg = TrialConfig.model_validate(raw)
    torch.set_num_threads(cfg.threads)
    device = torch.device("cpu")
    s = setup(cfg, LocalSession(), resume_dir=None)
    step = 0

    def loop_block() -> float:
        nonlocal step
        started = time.perf_counter()
        for _ in range(steps):
            train_step(s, cfg, step, device)
            step += 1
        return (time.perf_counter() - started) / steps

    def bare_block() -> float:
        started = time.perf_counter()
        for _ in range(steps):
            bare_loss("dpo", s.model, s.streams["dpo"].next(), cfg.train.beta).backward()
            torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.train.max_grad_norm)
            s.optimizer.step()
            s.optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - started) / steps

    loop_block(), bare_block()  # warm-up, not counted
    loop, bare = [], []
    for _ in range(blocks):
        loop.append(loop_block())
        bare.append(bare_block())
    return {"loop_step_s": loop, "bare_step_s": bare, "blocks": blocks, "steps_per_block": steps,
            "ratio": statistics.median(bare) / statistics.median(loop)}


def loop_vs_bare_dpo() -> dict:
    """DPO-only (sequential, λ = 1) at micro_batch_size = batch_size: the loop's optimizer
    steps/s against a bare loop's on the same model and batches, alternated in one process."""
    from workers.schedules import SEQUENTIAL

    raw = trial_config(schedule=SEQUENTIAL, lam=1.0, total_steps=STEPS, eval_every=STEPS)
    return run_isolated(_dpo_step_blocks, raw, 10, 40)


def _decisions(raw: dict) -> str:
    from workers.schedules import make_schedule

    t = _trial(raw).train
    schedule = make_schedule(t.schedule, t.lam, t.total_steps, seed=t.seed)
    return "".join("D" if schedule.plan(i).dpo_weight else "S" for i in range(t.total_steps))


def _worker_threads() -> int:
    import torch

    return torch.get_num_threads()


def trainer_vs_bare() -> dict:
    """ALRIGHT, λ = 0.5: steps/s of the loop's optimizer steps in a one-worker
    ``TorchTrainer`` (2 CPUs) and of the bare loop in a fresh process with as many threads,
    alternated ``REPS`` times."""
    import ray

    from orchestrator.cluster import connect
    from orchestrator.config import Resources
    from orchestrator.trial import build_trainer

    raw = trial_config(schedule=ALRIGHT, lam=LAM, total_steps=STEPS, eval_every=STEPS)
    decisions = _decisions(raw)
    resources = Resources(num_workers=1, cpus_per_worker=2)
    connect()
    threads = ray.get(ray.remote(num_cpus=2)(_worker_threads).remote())
    trainer, bare = [], []
    storage = tempfile.mkdtemp(prefix="trainer-", dir=WORK)
    for rep in range(REPS):
        bare.append(run_isolated(_bare_loop, raw, decisions, threads))
        print(f"  bare loop        rep {rep}: {bare[-1]['steps_per_s']:.1f} steps/s", flush=True)
        result = build_trainer(_trial(raw), resources, f"bench-{rep}", storage).fit()
        m = result.metrics
        trainer.append({"steps_per_s": m[metrics.STEP] / m[metrics.TRAIN_S], "seconds": m[metrics.TRAIN_S]})
        print(f"  TorchTrainer     rep {rep}: {trainer[-1]['steps_per_s']:.1f} steps/s", flush=True)
    ray.shutdown()
    ratio = statistics.mean(r["steps_per_s"] for r in trainer) / statistics.mean(r["steps_per_s"] for r in bare)
    return {"steps": STEPS, "worker_threads": threads, "trainer": trainer, "bare": bare, "ratio": ratio}


def _dpo_steps(raw: dict, blocks: int, steps: int) -> dict:
    """Alternating blocks of DPO steps on one model: reference log-probs from the cache,
    or from a forward of a second (frozen) model on the same batch."""
    import torch

    from workers.data import BatchStream, collate_pairs
    from workers.inputs import load_inputs
    from workers.losses import dpo_loss
    from workers.model import load_policy, make_optimizer
    from workers.forward import pair_logps

    cfg = _trial(raw)
    t = cfg.train
    device = torch.device("cpu")
    inputs = load_inputs(cfg, device)
    model = load_policy(cfg.model, cfg.cache_dir, device)
    reference = load_policy(cfg.model, cfg.cache_dir, device, lora=False).eval().requires_grad_(False)
    opt = make_optimizer(model.parameters(), t, device)
    stream = BatchStream(inputs.pref_train, t.batch_size, t.seed, lambda r: collate_pairs(r, inputs.tokenizer.pad_token_id))

    phases = {"collate": [], "reference": [], "forward": [], "backward": [], "clip+optimizer": []}

    def block(live: bool, record: bool = True) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            b = stream.next()
            t1 = time.perf_counter()
            if live:
                with torch.no_grad():
                    ref_c, ref_r = pair_logps(reference, b)
            else:
                ref_c, ref_r = b["ref_chosen"], b["ref_rejected"]
            t2 = time.perf_counter()
            c, r = pair_logps(model, b)
            loss = dpo_loss(c, r, ref_c, ref_r, t.beta)[0].mean()
            t3 = time.perf_counter()
            loss.backward()
            t4 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            t5 = time.perf_counter()
            if record:
                spans = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
                for name, span in zip(phases, spans):
                    if name != "reference" or live:
                        phases[name].append(span)
        return (time.perf_counter() - started) / steps

    block(False, False), block(True, False)  # warm-up, not counted
    cached, live = [], []
    for _ in range(blocks):
        cached.append(block(False))
        live.append(block(True))
    ms = {k: 1000 * statistics.median(v) for k, v in phases.items()}
    # What the phases predict: live adds one no-grad forward to what both pay.
    both = ms["collate"] + ms["forward"] + ms["backward"] + ms["clip+optimizer"]
    return {"cached_step_s": cached, "live_step_s": live, "phase_median_ms": ms,
            "predicted_ratio": both / (both + ms["reference"]),
            "ratio": statistics.median(cached) / statistics.median(live), "blocks": blocks, "steps_per_block": steps}


def cached_vs_live_reference() -> dict:
    return run_isolated(_dpo_steps, trial_config(), 6, 40)


def main() -> None:
    quiet_offline()
    prepare_cache()
    print("loop vs bare loop, DPO steps ...", flush=True)
    dpo = loop_vs_bare_dpo()
    print(f"  ratio {dpo['ratio']:.3f}", flush=True)
    print("TorchTrainer worker vs bare loop ...", flush=True)
    tvb = trainer_vs_bare()
    print(f"  ratio {tvb['ratio']:.3f}", flush=True)
    print("DPO step, cached vs live reference ...", flush=True)
    ref = cached_vs_live_reference()
    print(f"  ratio {ref['ratio']:.3f}", flush=True)
    write_result("throughput", {"loop_vs_bare_dpo": dpo, "trainer_vs_bare": tvb, "cached_vs_live_reference": ref},
                 "python -m bench.throughput")


if __name__ == "__main__":
    main()
