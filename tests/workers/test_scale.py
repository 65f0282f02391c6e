"""What lets a trial fit a big model on one GPU: micro-batches, activation checkpointing,
mixed precision, an LR schedule — each must train the model it trained before."""

import pytest
import torch

from tests.support.ddp import run_ranks
from workers.config import TrialConfig
from workers.loop import fit
from workers.session import LocalSession


def trial(cache_dir, lora=None, **train) -> TrialConfig:
    base = {"total_steps": 30, "eval_every": 15, "lr": 3e-3, "batch_size": 16}
    return TrialConfig.model_validate(
        {"cache_dir": cache_dir, "model": {"lora": lora}, "data": {"max_len": 64}, "train": {**base, **train}}
    ).resolved()


def ends(traj) -> dict:
    """The last point's held-out and training losses."""
    return {k: v for k, v in traj[-1].items() if k.startswith(("eval/", "train/"))}


SCHEDULES = {"sft-only": ("sequential", 0.0), "dpo-only": ("sequential", 1.0), "mix": ("mix", 0.5), "alright": ("alright", 0.5)}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_micro_batches_give_the_update_of_the_whole_batch(cache_dir, schedule):
    """Batch 16 in micro-batches of 4 (trimmed to their own longest row) ends where one
    batch of 16 ends: SFT is a token mean over the whole batch, DPO a mean over its pairs."""
    name, lam = SCHEDULES[schedule]
    whole = fit(trial(cache_dir, schedule=name, lam=lam), LocalSession())
    micro = fit(trial(cache_dir, schedule=name, lam=lam, micro_batch_size=4), LocalSession())
    assert ends(micro) == pytest.approx(ends(whole), abs=1e-4)
    assert ends(micro) != ends(whole), "micro-batches ran no differently: the test would show nothing"


def _ddp_trial(session, cache_dir, lora, train):
    return ends(fit(trial(cache_dir, lora, schedule="alright", lam=0.5, batch_size=8, **train), session))


def test_micro_batches_under_ddp_give_the_update_of_the_whole_batch(cache_dir):
    """Two gloo ranks: only the last micro-batch all-reduces, and the result is the update
    of each rank's whole batch."""
    from workers.embedded import ensure_embedded

    ensure_embedded(cache_dir)  # built once here, not by two ranks at once
    whole = run_ranks(_ddp_trial, 2, cache_dir, None, {})
    micro = run_ranks(_ddp_trial, 2, cache_dir, None, {"micro_batch_size": 3})
    for rank in (0, 1):  # training losses are each rank's own batches'; held-out ones all-reduced
        assert micro[rank] == pytest.approx(whole[rank], abs=1e-4)
    assert {k: v for k, v in whole[0].items() if k.startswith("eval/")} == {
        k: v for k, v in whole[1].items() if k.startswith("eval/")}


def test_gradient_checkpointing_trains_the_same_model(cache_dir):
    plain = fit(trial(cache_dir, {"r": 4, "alpha": 8}, schedule="mix", lam=0.5), LocalSession())
    checkpointed = fit(trial(cache_dir, {"r": 4, "alpha": 8}, schedule="mix", lam=0.5, gradient_checkpointing=True),
                       LocalSession())
    assert ends(checkpointed) == pytest.approx(ends(plain), abs=1e-5)


def test_gradient_checkpointing_works_with_lora_under_ddp(cache_dir):
    from workers.embedded import ensure_embedded

    ensure_embedded(cache_dir)
    lora = {"r": 4, "alpha": 8}
    plain = run_ranks(_ddp_trial, 2, cache_dir, lora, {})
    checkpointed = run_ranks(_ddp_trial, 2, cache_dir, lora, {"gradient_checkpointing": True, "micro_batch_size": 4})
    for rank in (0, 1):
        assert checkpointed[rank] == pytest.approx(plain[rank], abs=1e-4)


def test_bf16_mixed_trains_the_embedded_model_as_float32_does(cache_dir):
    """Autocast to bfloat16 with float32 master weights: within 10 % of float32's final losses."""
    fp32 = fit(trial(cache_dir, schedule="alright", lam=0.5, total_steps=150, eval_every=150), LocalSession())
    bf16 = fit(trial(cache_dir, schedule="alright", lam=0.5, total_steps=150, eval_every=150, precision="bf16-mixed"),
               LocalSession())
    for key in ("eval/sft_loss", "eval/dpo_loss"):
        assert bf16[-1][key] == pytest.approx(fp32[-1][key], rel=0.10), key
    assert bf16[-1]["eval/sft_loss"] < 0.85 * bf16[0]["eval/sft_loss"], "bf16-mixed did not train"
    assert bf16[0]["eval/dpo_loss"] == pytest.approx(0.6931, abs=1e-3)  # its reference was computed alike


def test_16_mixed_scales_gradients_and_checkpoints_the_scaler(cache_dir, tmp_path):
    import json

    session = LocalSession(checkpoint_root=str(tmp_path))
    traj = fit(trial(cache_dir, schedule="sequential", lam=0.0, total_steps=20, eval_every=10, checkpoint_every=10,
                     precision="16-mixed"), session)
    assert traj[-1]["eval/sft_loss"] < traj[0]["eval/sft_loss"]
    state = json.loads((tmp_path / "checkpoint_000020" / "state.json").read_text())
    assert state["scaler"]["scale"] > 1  # the loss was scaled up (float16 gradients would underflow)


def test_bf16_true_keeps_lora_adapters_in_float32(cache_dir):
    from workers.loop import setup

    s = setup(trial(cache_dir, {"r": 4, "alpha": 8}, precision="bf16-true"), LocalSession(), resume_dir=None)
    dtypes = {n: p.dtype for n, p in s.model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}


def test_warmup_then_cosine_decay(cache_dir):
    """lr 1e-3, 2 warm-up steps of 10: 0, 0.5, then 0.5·(1 + cos(π·(k−2)/8)) of lr."""
    import math

    from workers.model import make_lr_scheduler

    t = trial(cache_dir, lr=1e-3, total_steps=10, lr_schedule="cosine", warmup_steps=2).train
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=t.lr)
    sched = make_lr_scheduler(opt, t)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.0, 5e-4] + [1e-3 * 0.5 * (1 + math.cos(math.pi * (k - 2) / 8)) for k in range(2, 10)]
    assert seen == pytest.approx(expected, abs=1e-12)


def test_a_stopped_trial_resumes_on_its_lr_schedule(cache_dir, tmp_path):
    cfg = trial(cache_dir, schedule="alright", lam=0.5, total_steps=40, eval_every=10, checkpoint_every=20,
                lr_schedule="linear", warmup_steps=5)
    whole = fit(cfg, LocalSession())
    first = LocalSession(checkpoint_root=str(tmp_path / "ckpt"))
    fit(cfg.model_copy(update={"train": cfg.train.model_copy(update={"stop_after": 20})}), first)
    rest = fit(cfg, LocalSession(resume_from=first.checkpoints[-1]))
    assert ends(rest) == pytest.approx(ends(whole), abs=1e-5)
