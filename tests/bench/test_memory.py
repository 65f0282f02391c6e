"""bench.memory's settings are valid trials, and its table renders (no measuring here)."""

from bench import memory, render
from workers.config import TrialConfig
from workers.estimate import estimate


def test_every_setting_is_a_valid_trial_with_an_estimate(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "WORK", tmp_path)
    for name, (arch, micro, max_len, gc, lora, precision) in memory.SETTINGS.items():
        e = estimate(TrialConfig.model_validate(memory.trial_for(name)), device="cpu")
        assert (e.micro_batch, e.rows, e.max_len, e.gradient_checkpointing, e.precision) == (micro, 2 * micro, max_len, gc, precision)
        assert e.shape.model_type == {"neox": "gpt_neox", "llama": "llama"}[arch] and (e.lora is not None) == lora
        assert e.overhead == 0


def test_the_table_has_a_row_per_setting_and_a_verdict():
    parts = {"weights": 2**20, "weight_copies": 0, "gradients": 2**20, "optimizer": 2 * 2**20, "activations": 3 * 2**20,
             "recompute": 0, "logits": 5 * 2**20, "ddp_buckets": 0, "overhead": 0}
    data = {"tolerance": 0.25, "steps": 2, "micro_batches": 2, "settings": {k: list(v) for k, v in memory.SETTINGS.items()},
            "models": {"neox": memory.NEOX, "llama": memory.LLAMA}, "lora": memory.LORA,
            "rows": [{"setting": name, "parts": parts, "estimate": 12 * 2**20, "measured": 10 * 2**20, "error": 0.2,
                      "within": True} for name in memory.SETTINGS]}
    data["rows"][0].update(measured=8 * 2**20, error=0.5, within=False)
    lines = render.memory_section(data)
    rows = [line for line in lines if line.startswith("| neox-") or line.startswith("| llama-")]
    assert len(rows) == len(memory.SETTINGS)
    assert rows[0].endswith("| 12 | 8 | +50.0 % | **missed** |") and rows[1].endswith("| +20.0 % | **met** |")
    assert "| 4 | 3 | – | 5 |" in rows[1]  # weights + grads + AdamW, activations, no recompute, logits
    assert any("Largest error: +50.0 % (neox-mb1-T256)" in line for line in lines)
