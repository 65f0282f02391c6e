"""``rightsweep estimate`` offline on the presets, and the check that refuses a trial whose
estimate does not fit its GPU (the refusal's exit code: tests/e2e/faults/test_bad_input.py)."""

from types import SimpleNamespace

import pytest

from orchestrator.cli import main
from orchestrator.config import ConfigError, load_config
from orchestrator.preflight import check_memory

TOO_BIG = ["--set", "trial.train.micro_batch_size=16", "--set", "trial.train.batch_size=16",
           "--set", "trial.data.max_len=4096"]


@pytest.fixture
def estimate_cli(capsys):
    def run(*args):
        code = main(["estimate", *args])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


@pytest.mark.parametrize("preset,params", [
    ("llama3-8b-lora", "8,037,076,992 total, 6,815,744 trainable"),
    ("pythia-1b", "1,015,975,936 total, 4,194,304 trainable"),
])
def test_the_presets_fit_their_24_gb_offline(preset, params, estimate_cli):
    proc = estimate_cli("--config", preset)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for part in ("weights", "gradients", "optimizer state (AdamW)", "activations", "logits (LM head chunk)", "total"):
        assert f"  {part}" in out
    assert f"parameters: {params}" in out and "precision: bf16-true" in out and "gradient checkpointing: " in out
    assert "fits in 24 GB (resources.gpu_memory_gb): yes; largest micro_batch_size that fits:" in out


def test_a_micro_batch_that_does_not_fit_exits_1_and_says_what_does(estimate_cli):
    proc = estimate_cli("--config", "llama3-8b-lora", *TOO_BIG)
    assert proc.returncode == 1
    assert "fits in 24 GB (resources.gpu_memory_gb): NO; largest micro_batch_size that fits: 1 (batch_size 16)" in proc.stdout
    off = estimate_cli("--config", "pythia-1b", *TOO_BIG, "--set", "trial.train.gradient_checkpointing=false")
    assert off.returncode == 1 and "NO" in off.stdout


def test_the_gpu_memory_from_the_command_line_or_unknown(estimate_cli):
    assert "fits in 141 GB (--gpu-memory-gb): yes" in estimate_cli("--config", "llama3-8b-lora", *TOO_BIG, "--gpu-memory-gb", "141").stdout
    proc = estimate_cli("--config", "smoke")
    assert proc.returncode == 0 and "fits: unknown (no GPU memory given" in proc.stdout


def test_check_memory_names_the_micro_batch_and_what_fits():
    from workers.estimate import GB, estimate, largest_micro_batch

    cfg = load_config("llama3-8b-lora", [item for item in TOO_BIG if item != "--set"])
    with pytest.raises(ConfigError) as e:
        check_memory(cfg)
    total = estimate(cfg.trial, cfg.resources.num_workers).total
    assert str(e.value).startswith("trial.train.micro_batch_size: 16 does not fit: a training process's memory estimate "
                                   f"is {total / GB:.2f} GB")
    assert "resources.gpu_memory_gb is 24 GB; the largest micro_batch_size that fits is 1" in str(e.value)
    assert largest_micro_batch(cfg.trial, 24 * GB, cfg.resources.num_workers) == 1
    check_memory(load_config("llama3-8b-lora"))  # the preset fits
    check_memory(cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"gpu_memory_gb": None})}))  # unknown
    check_memory(cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"use_gpu": False})}))  # no GPU trial
