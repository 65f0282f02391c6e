import subprocess
import sys

import pytest

from orchestrator.config import PRESETS, ConfigError, load_config, parse_override
from orchestrator.space import main_points


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS.glob("*.yaml")))
def test_every_preset_validates(preset):
    cfg = load_config(preset)
    assert cfg.name == preset
    assert cfg.sweep.lams and cfg.sweep.schedules


def test_the_paper_presets_match_the_paper():
    pythia = load_config("pythia-1b").trial
    assert pythia.model.lora.r == 32 and pythia.model.lora.targets == ["query_key_value"]
    llama = load_config("llama3-8b-lora").trial
    assert llama.model.lora.r == 16 and llama.model.lora.targets == ["q_proj", "v_proj"]
    for t in (pythia.train, llama.train):
        assert (t.lr, t.betas, t.max_grad_norm, t.beta, t.maxright_eval_every) == (5e-5, (0.9, 0.95), 1.0, 0.1, 10)
    assert pythia.data.pref.source == "Dahoas/rm-hh-rlhf" and pythia.data.sft.source == "vicgalle/alpaca-gpt4"


def test_default_sweep_is_the_issue_grid():
    cfg = load_config("default")
    assert cfg.sweep.schedules == ["sequential", "mix", "alright", "maxright"]
    assert cfg.sweep.lams == [0.25, 0.5, 0.75] and cfg.sweep.anchors
    assert cfg.sweep.seeds == [0, 1, 2], "fronts over seed means: no single seed decides them"
    assert len(main_points(cfg.sweep.schedules, cfg.sweep.lams, cfg.sweep.seeds)) == 36
    assert cfg.trial.threads == 1, "a trial's torch threads are resources.cpus_per_worker"
    assert load_config("default", ["resources.cpus_per_worker=2"]).trial.threads == 2


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["trial.train.lam=1.5"], "trial.train.lam: Input should be less than or equal to 1"),
        (["trial.train.schedule=roundrobin"], "trial.train.schedule: got 'roundrobin'; input should be 'sequential', 'mix', 'alright' or 'maxright'"),
        (["trial.train.lr_rate=0.1"], "trial.train.lr_rate: unknown key"),
        (["trial.train.total_steps=many"], "trial.train.total_steps: Input should be a valid integer"),
        (["sweep.lams=[]"], "sweep.lams: List should have at least 1 item"),
        (["sweep.lams=[0.5, 2]"], "sweep.lams.1: Input should be less than or equal to 1"),
        (["sweep.anchors=false"], "maxright, which needs f*"),
        (["trial.data.sft.preset=hh"], "trial.data.sft.preset: 'hh' is not for sft data; allowed: alpaca, custom"),
        (["storage=s3://bucket/sweeps"], "storage: 's3://bucket/sweeps' is a URI; storage is a folder path"),
    ],
)
def test_config_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", overrides)
    assert message in str(e.value)


def test_overrides_parse_yaml_values():
    assert parse_override("trial.train.lam=0.25") == (["trial", "train", "lam"], 0.25)
    assert parse_override("sweep.schedules=[mix, alright]") == (["sweep", "schedules"], ["mix", "alright"])
    for bad in ("lam", "=3", "a..b=1", "x=[1,"):
        with pytest.raises(ConfigError, match="--set"):
            parse_override(bad)


def test_a_dataset_override_keeps_the_presets_other_fields():
    """pythia-1b's preference data is rm-hh-rlhf with eval_split test and eval_size 500: a new
    source keeps them; a field of a nested dict merges too; a scalar or list replaces."""
    cfg = load_config("pythia-1b", ["trial.data.pref={source: other/pairs, columns: {chosen: better}}"])
    pref = cfg.trial.data.pref
    assert (pref.source, pref.eval_split, pref.eval_size, pref.preset) == ("other/pairs", "test", 500, "hh")
    assert pref.columns == {"prompt": "prompt", "chosen": "better", "rejected": "rejected"}
    assert load_config("default", ["sweep.lams=[0.5]"]).sweep.lams == [0.5]
    assert load_config("smoke", ["trial.data.sft={source: /x/a.jsonl}"]).trial.data.sft.eval_size == 32


def test_help_is_fast_and_imports_no_ray_or_torch():
    code = "import sys; from orchestrator.cli import parser; parser(); print(sorted(m for m in ('ray', 'torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
