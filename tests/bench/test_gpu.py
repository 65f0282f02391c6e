"""The GPU check runs the same code on CPU (``--tiny``): it must not wait for a GPU to break."""

import json

from bench import gpu


def test_the_gpu_check_runs_on_cpu_with_tiny_models(tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--tiny", "--steps", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["tiny"] and data["device"] is None
    for preset in ("pythia-1b", "llama3-8b-lora"):
        result = data["presets"][preset]
        assert result["settings"]["lora"]
        for objective in ("sft", "dpo"):
            assert result[objective]["steps"] == 2 and result[objective]["tokens_per_s"] > 0
            assert result[objective]["mfu"] is None  # no peak FLOP/s for a CPU: none is made up
        # Timed on a shared CPU with 2 steps, the ratio is noise: that it is measured is what counts here.
        assert result["reference"]["cached_step_s"] > 0 and result["reference"]["live_step_s"] > 0
    assert {data["presets"][p]["model"] for p in data["presets"]} == {"gpt_neox", "llama"}
    assert data["presets"]["llama3-8b-lora"]["settings"]["gradient_checkpointing"]  # the preset's, as it ships


def test_without_a_gpu_the_check_says_so_and_measures_nothing(tmp_path, capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the check would run")
    assert gpu.main(["--out", str(tmp_path / "gpu.json")]) == 2
    assert "no GPU here" in capsys.readouterr().out and not (tmp_path / "gpu.json").exists()
