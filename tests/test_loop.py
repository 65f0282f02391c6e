"""The training loop, in-process on the embedded default (real model, real data)."""

import json
from pathlib import Path

import pytest
import torch

from workers.config import TrialConfig
from workers.loop import fit
from workers.reference import ensure_reference
from workers.session import LocalSession


def trial(cache_dir, lora=None, **train) -> TrialConfig:
    base = {"total_steps": 150, "eval_every": 50, "lr": 3e-3, "batch_size": 16}
    return TrialConfig.model_validate(
        {"cache_dir": cache_dir, "model": {"lora": lora}, "data": {"max_len": 64}, "train": {**base, **train}}
    ).resolved()


def run(cfg, **session):
    return fit(cfg, LocalSession(**session))


def test_sft_only_lowers_sft_loss(cache_dir):
    traj = run(trial(cache_dir, schedule="sequential", lam=0.0))
    assert traj[-1]["updates/dpo"] == 0 and traj[-1]["updates/sft"] == 150
    assert traj[-1]["eval/sft_loss"] < 0.5 * traj[0]["eval/sft_loss"]


def test_dpo_only_lowers_dpo_loss_and_learns_preferences(cache_dir):
    traj = run(trial(cache_dir, schedule="sequential", lam=1.0))
    assert traj[-1]["updates/sft"] == 0 and traj[-1]["updates/dpo"] == 150
    assert traj[0]["eval/dpo_loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference
    assert traj[-1]["eval/dpo_loss"] < 0.5 * traj[0]["eval/dpo_loss"]
    assert traj[-1]["eval/pref_accuracy"] > 0.9


def test_sequential_forgets_the_first_stage(cache_dir):
    traj = run(trial(cache_dir, schedule="sequential", lam=0.5, total_steps=300))
    at_switch = next(p for p in traj if p["step"] == 150)
    assert at_switch["updates/dpo"] == 150 and at_switch["updates/sft"] == 0
    assert traj[-1]["eval/dpo_loss"] > at_switch["eval/dpo_loss"] + 0.5, "SFT stage undid the DPO stage"


def test_alright_lowers_both_losses(cache_dir):
    traj = run(trial(cache_dir, schedule="alright", lam=0.5, total_steps=300))
    start, end = traj[0], traj[-1]
    assert end["eval/sft_loss"] < start["eval/sft_loss"] and end["eval/dpo_loss"] < start["eval/dpo_loss"]
    assert 100 < end["updates/dpo"] < 200 and end["updates/dpo"] + end["updates/sft"] == 300
    assert [p["step"] for p in traj] == [0, 50, 100, 150, 200, 250, 300]
    assert end["time/train_s"] > 0 and end["tokens/sft"] > 0 and end["system/peak_mem_mb"] > 0


def test_mix_steps_both_objectives_every_step(cache_dir):
    traj = run(trial(cache_dir, schedule="mix", lam=0.5, total_steps=20, eval_every=10))
    assert traj[-1]["updates/sft"] == traj[-1]["updates/dpo"] == 20


def test_reference_logps_are_computed_once_and_cached(cache_dir, tokenizer):
    from workers.data import load_split_tokenized

    cfg = trial(cache_dir)
    pref_train, pref_eval = load_split_tokenized(cfg.data.pref, "pref", tokenizer, 64, 0, cache_dir)
    first, _ = ensure_reference(cfg, tokenizer, pref_train, pref_eval, torch.device("cpu"))
    passes = Path(cache_dir) / "reference" / "passes.jsonl"
    recorded = passes.read_text().splitlines()
    assert json.loads(recorded[-1])["pairs"] == len(pref_train) + len(pref_eval)
    again, computed = ensure_reference(cfg, tokenizer, pref_train, pref_eval, torch.device("cpu"))
    assert not computed
    assert passes.read_text().splitlines() == recorded  # a cache hit is not a pass
    assert torch.equal(first[0][0], again[0][0]) and len(first[1][0]) == len(pref_eval)
    other = trial(cache_dir, total_steps=7)  # training options do not change the key
    _, computed = ensure_reference(other, tokenizer, pref_train, pref_eval, torch.device("cpu"))
    assert not computed


def final_losses(traj):
    return traj[-1]["eval/sft_loss"], traj[-1]["eval/dpo_loss"]


@pytest.mark.parametrize("schedule,lora", [("alright", False), ("maxright", False), ("alright", True)])
def test_stop_and_resume_matches_uninterrupted(cache_dir, tmp_path, schedule, lora):
    extra = {"f_star_sft": 0.2, "f_star_dpo": 0.1, "maxright_eval_every": 3} if schedule == "maxright" else {}
    lora = {"r": 4, "alpha": 8} if lora else None
    cfg = trial(cache_dir, lora, schedule=schedule, lam=0.5, total_steps=40, eval_every=10, checkpoint_every=20, **extra)
    whole = run(cfg)
    first = LocalSession(checkpoint_root=str(tmp_path / "ckpt"))
    stopped = cfg.model_copy(update={"train": cfg.train.model_copy(update={"stop_after": 20})})
    part = fit(stopped, first)
    assert part[-1]["step"] == 20 and first.checkpoints
    rest = run(cfg, resume_from=first.checkpoints[-1])
    assert rest[-1]["step"] == 40 and [p["step"] for p in rest] == [0, 10, 20, 30, 40]
    assert final_losses(rest) == pytest.approx(final_losses(whole), abs=1e-5)
    assert rest[-1]["updates/sft"] == whole[-1]["updates/sft"]


def test_final_model_loads_with_from_pretrained(cache_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from workers.model import model_path

    out = tmp_path / "full"
    cfg = trial(cache_dir, total_steps=10, eval_every=10).model_copy(update={"output_dir": str(out)})
    run(cfg)
    summary = json.loads((out / "trajectory.json").read_text())
    assert len(summary["decisions"]) == 10 and summary["points"][-1]["step"] == 10
    assert (out / "model" / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.model_type == "gpt_neox"

    out = tmp_path / "lora"
    lora = trial(cache_dir, {"r": 4, "alpha": 8}, total_steps=10, eval_every=10).model_copy(update={"output_dir": str(out)})
    run(lora)
    assert (out / "model" / "adapter_model.safetensors").is_file()
    assert not (out / "model" / "model.safetensors").exists(), "LoRA saves the adapter alone"
    base = AutoModelForCausalLM.from_pretrained(model_path(lora.model, cache_dir))
    adapted = PeftModel.from_pretrained(base, out / "model")
    lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "the adapter was trained"


def test_peak_memory_is_per_trial_after_a_reset():
    from workers.loop import peak_memory_mb, reset_peak_memory

    cpu = torch.device("cpu")
    big = torch.ones(400 * 2**20 // 4)  # 400 MiB, touched
    high = peak_memory_mb(cpu)
    del big
    reset_peak_memory(cpu)
    after = peak_memory_mb(cpu)
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("no /proc: the peak is the process's (ru_maxrss)")
    assert after < high - 300, (high, after)
