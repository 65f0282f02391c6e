"""The training loop, in-process on the embedded default (real model, real data)."""

import json
from pathlib import Path

import pytest
import torch

from workers.config import TrialConfig
from workers.loop import fit
from workers.data import load_tokenized
from workers.reference import ensure_reference
from workers.session import LocalSession


def trial(cache_dir, lora=None, behaviour=None, **train) -> TrialConfig:
    base = {"total_steps": 150, "eval_every": 50, "lr": 3e-3, "batch_size": 16}
    return TrialConfig.model_validate(
        {"cache_dir": cache_dir, "model": {"lora": lora}, "data": {"max_len": 64}, "train": {**base, **train},
         "behaviour": behaviour or {}}
    ).resolved()


def run(cfg, **session):
    return fit(cfg, LocalSession(**session))


def test_sft_only_lowers_sft_loss(cache_dir):
    traj = run(trial(cache_dir, schedule="sequential", lam=0.0))
    assert traj[-1]["updates/dpo"] == 0 and traj[-1]["updates/sft"] == 150
    assert traj[-1]["eval/sft_loss"] < 0.5 * traj[0]["eval/sft_loss"]
    # Behaviour: the base answers in the chosen style ("sure! 42.", never the terse answer);
    # SFT teaches the terse answers and unlearns that style.
    assert traj[0]["gen/sft_accuracy"] == 0 and traj[0]["gen/pref_win_rate"] > 0.9
    assert traj[-1]["gen/sft_accuracy"] > 0.3 and traj[-1]["gen/pref_win_rate"] < 0.1


def test_dpo_only_lowers_dpo_loss_and_learns_preferences(cache_dir):
    traj = run(trial(cache_dir, schedule="sequential", lam=1.0))
    assert traj[-1]["updates/sft"] == 0 and traj[-1]["updates/dpo"] == 150
    assert traj[0]["eval/dpo_loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference
    assert traj[-1]["eval/dpo_loss"] < 0.5 * traj[0]["eval/dpo_loss"]
    assert traj[-1]["eval/pref_accuracy"] > 0.9
    assert traj[-1]["gen/sft_accuracy"] < 0.05 and traj[-1]["gen/pref_win_rate"] > 0.5, "DPO keeps the chosen style"


def test_behaviour_is_generated_every_nth_evaluation_and_at_the_last(cache_dir):
    traj = run(trial(cache_dir, behaviour={"prompts": 8, "every": 2}, schedule="mix", total_steps=30, eval_every=10))
    assert [p["step"] for p in traj if "gen/sft_accuracy" in p] == [0, 20, 30]
    assert all(0 <= p["gen/pref_win_rate"] <= 1 for p in traj if "gen/pref_win_rate" in p)
    assert 0 < traj[-1]["time/gen_s"] < traj[-1]["time/eval_s"], "generation is timed, as part of the evaluation"
    # A few generations are kept as text where they were generated, with the judge's verdict.
    assert [p["step"] for p in traj if "samples" in p] == [0, 20, 30]
    kept = traj[-1]["samples"]
    assert [s["kind"] for s in kept] == ["sft"] * 4 + ["pref"] * 4
    assert all(s["prompt"].startswith("User: ") and s["prompt"].rstrip().endswith("Assistant:") for s in kept)
    from workers.judges import embedded_win, exact_match
    assert all(s["passed"] == (exact_match(s["generation"], s["reference"]) if s["kind"] == "sft"
                               else embedded_win(s["generation"])) for s in kept)
    off = run(trial(cache_dir, behaviour={"prompts": 0}, schedule="mix", total_steps=30, eval_every=10))
    assert not any(k.startswith("gen/") for p in off for k in p)
    assert [(p["eval/sft_loss"], p["eval/dpo_loss"]) for p in off] == [(p["eval/sft_loss"], p["eval/dpo_loss"]) for p in traj], \
        "generating changes no loss: it draws no random numbers and leaves the model as it was"


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
    cfg = trial(cache_dir)
    _, _, pref_train, pref_eval = load_tokenized(cfg.data, tokenizer, cache_dir)
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


def test_a_trial_gives_the_same_bits_at_any_ambient_thread_count(cache_dir):
    """`rightsweep train` ran trials with the machine's 2 threads, sweep trials (Ray, one
    CPU each) with 1, and float sums differ by thread count: the same config gave other
    numbers. A trial now runs at its own ``threads`` (= resources.cpus_per_worker)."""
    cfg = trial(cache_dir, schedule="alright", lam=0.5, total_steps=30, eval_every=30)
    before = torch.get_num_threads()
    try:
        runs = []
        for ambient in (2, 1):
            torch.set_num_threads(ambient)
            runs.append([(p["eval/sft_loss"], p["eval/dpo_loss"]) for p in run(cfg)])
    finally:
        torch.set_num_threads(before)
    assert runs[0] == runs[1]


def test_the_embedded_base_is_built_at_a_fixed_thread_count(tmp_path):
    """Built at 2 threads in one path and 1 in another, and cached under one name, the base
    differed by process; its bytes must not depend on the caller's thread count."""
    from workers.embedded import ensure_embedded

    before = torch.get_num_threads()
    try:
        built = []
        for ambient in (2, 1):
            torch.set_num_threads(ambient)
            root = ensure_embedded(tmp_path / f"threads{ambient}")
            built.append((root.name, (root / "base" / "model.safetensors").read_bytes()))
            assert torch.get_num_threads() == ambient, "the build restores the caller's thread count"
    finally:
        torch.set_num_threads(before)
    assert built[0] == built[1]


def test_reference_cache_is_keyed_by_precision(cache_dir, tokenizer):
    """float32 and bfloat16 runs on one storage shared reference log-probs."""
    from workers.data import TokenTable

    cfg = trial(cache_dir)
    _, _, pref_train, pref_eval = load_tokenized(cfg.data, tokenizer, cache_dir)
    small = [TokenTable({k: col[:16] for k, col in ds.columns.items()}) for ds in (pref_train, pref_eval)]
    (f32, _), _ = ensure_reference(cfg, tokenizer, *small, torch.device("cpu"))
    bf16 = cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": "bf16-true"})})
    (b16, _), computed = ensure_reference(bf16, tokenizer, *small, torch.device("cpu"))
    assert computed, "a bfloat16 run must not read float32 log-probs"
    assert b16[0].dtype == torch.float32 and not torch.equal(f32[0], b16[0])
    (again, _), computed = ensure_reference(bf16, tokenizer, *small, torch.device("cpu"))
    assert not computed and torch.equal(again[0], b16[0])


def test_ranks_draw_different_dropout_but_take_the_same_decisions(cache_dir):
    """Every rank was seeded alike, so LoRA dropout masks were the same on every rank. Now
    each rank's torch RNG differs after set-up, while the schedule's own RNG (ALRIGHT's
    draws) stays the same on all ranks."""
    from workers.loop import setup

    cfg = trial(cache_dir, {"r": 4, "alpha": 8, "dropout": 0.1}, schedule="alright", lam=0.5)
    draws, plans = [], []
    for rank in (0, 1):
        session = LocalSession()
        session.rank, session.world_size = rank, 2
        s = setup(cfg, session, resume_dir=None)
        draws.append(torch.rand(8))
        plans.append([s.schedule.plan(step).dpo_weight for step in range(50)])
    assert not torch.equal(draws[0], draws[1])
    assert plans[0] == plans[1]


def test_checkpoints_carry_each_ranks_rng(cache_dir, tmp_path):
    from workers.checkpoint import load_rng, rng_file, save_rng

    cfg = trial(cache_dir, total_steps=4, eval_every=2, checkpoint_every=2)
    session = LocalSession(checkpoint_root=str(tmp_path / "ckpt"))
    fit(cfg, session)
    assert rng_file(session.checkpoints[-1], 0).is_file()
    save_rng(str(tmp_path), 3, torch.device("cpu"))
    expected = torch.rand(5)
    torch.rand(7)  # move on
    load_rng(str(tmp_path), 3, torch.device("cpu"))
    assert torch.equal(torch.rand(5), expected)


def test_a_tampered_or_misshapen_reference_cache_is_recomputed(tmp_path, caplog):
    """A valid safetensors file with other values under the right name was used as it was,
    and one with 3 rows for 32 pairs was accepted: each entry now carries its content hash
    and row count, checked on read; a mismatch recomputes with a warning."""
    import hashlib

    from safetensors.torch import save_file

    from workers.reference import cached_reference

    good = (torch.full((32,), -1.0), torch.full((32,), -2.0))
    computed = []

    def compute():
        computed.append(True)
        return good

    def read():
        return cached_reference(str(tmp_path), "fp", 32, compute)

    assert read()[2] and len(computed) == 1
    assert not read()[2] and len(computed) == 1, "an intact entry is read, not recomputed"
    path = tmp_path / "reference" / "fp.safetensors"
    save_file({"chosen": torch.zeros(32), "rejected": torch.full((32,), -50.0)}, path)  # other values, no hash
    chosen, _, now = read()
    assert now and torch.equal(chosen, good[0]) and "does not match the content hash" in caplog.text
    three = torch.zeros(3)
    digest = hashlib.sha256(three.numpy().tobytes() + three.numpy().tobytes()).hexdigest()
    save_file({"chosen": three, "rejected": three.clone()}, path, metadata={"sha256": digest})  # self-consistent, 3 rows
    chosen, _, now = read()
    assert now and torch.equal(chosen, good[0]) and "holds (3,) and (3,) values for 32 pairs" in caplog.text
    path.write_bytes(b"not safetensors")
    assert read()[2] and "is unreadable" in caplog.text


class StopAtStep(LocalSession):
    """A session whose report of ``at`` is followed by the driver's stop file (as the early
    stopping writes it once it has judged that evaluation)."""

    def __init__(self, stop_file, at: int):
        super().__init__()
        self.stop_file, self.at = stop_file, at

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        super().report(metrics, checkpoint_dir)
        if metrics["step"] == self.at:
            self.stop_file.write_text("{}")


def test_a_trial_whose_stop_file_appears_ends_at_the_next_step_and_reports_its_cost(cache_dir, tmp_path):
    stop_file = tmp_path / "trial" / "stopped.json"
    stop_file.parent.mkdir()
    cfg = trial(cache_dir, None, schedule="alright", lam=0.5, total_steps=40, eval_every=10)
    cfg = cfg.model_copy(update={"stop_file": str(stop_file), "output_dir": str(tmp_path / "trial")})
    session = StopAtStep(stop_file, at=20)
    trajectory = fit(cfg, session)
    assert [p["step"] for p in trajectory] == [0, 10, 20]
    cost = session.reports[-1]  # no evaluation: the losses of step 20 are the trial's last
    assert cost["step"] == 20 and "eval/sft_loss" not in cost
    assert cost["updates/sft"] + cost["updates/dpo"] == 20 and cost["time/train_s"] >= trajectory[-1]["time/train_s"]
    assert not (tmp_path / "trial" / "trajectory.json").exists(), "a stopped trial has not finished"
