"""The reward-model judge, end to end, with a small reward model built here: a
random-init one-output sequence classifier saved with ``save_pretrained``."""

import pytest
import torch

from workers.config import ConfigError, TrialConfig
from workers.loop import fit
from workers.reward import RewardJudge
from workers.session import LocalSession


def save_classifier(path, tokenizer, num_labels=1):
    from transformers import GPTNeoXConfig, GPTNeoXForSequenceClassification

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=256, num_labels=num_labels,
                           pad_token_id=tokenizer.pad_token_id)
    GPTNeoXForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, tokenizer):
    return save_classifier(tmp_path_factory.mktemp("rm"), tokenizer)


def test_a_generation_wins_when_it_outscores_the_chosen_response_and_a_tie_counts_half(reward_model):
    judge = RewardJudge(reward_model, torch.device("cpu"), batch_size=3)
    prompts = ["User: what comes after 41\nAssistant:"] * 3
    generations = [" sure! 42.", " 42", " sure! 42."]
    references = [" sure! 42.", " sure! 42.", " 7"]
    scores = judge.scores([p + g for p, g in zip(prompts, generations)] + [p + r for p, r in zip(prompts, references)])
    wins = judge.wins(prompts, generations, references)
    assert wins[0] == 0.5, "the chosen response itself ties, whatever batch it is scored in"
    assert wins[1:] == [float(scores[1] > scores[4]), float(scores[2] > scores[5])]
    assert len(set(scores)) > 1, "a random-init classifier still tells texts apart"


def test_a_classifier_with_more_than_one_output_is_refused(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match=r"reward_model: .* has 2 outputs"):
        RewardJudge(save_classifier(tmp_path, tokenizer, num_labels=2), torch.device("cpu"), 4)


def test_the_reward_model_judge_runs_in_a_trial_end_to_end(cache_dir, reward_model):
    cfg = TrialConfig.model_validate({
        "cache_dir": cache_dir, "data": {"max_len": 64},
        "train": {"schedule": "alright", "total_steps": 10, "eval_every": 10, "batch_size": 8},
        "behaviour": {"prompts": 8, "pref_judge": "reward_model", "reward_model": reward_model, "samples": 2},
    }).resolved()
    traj = fit(cfg, LocalSession())
    judge = RewardJudge(reward_model, torch.device("cpu"), batch_size=8)
    for point in traj:
        assert 0 <= point["gen/pref_win_rate"] <= 1
        pref = [s for s in point["samples"] if s["kind"] == "pref"]
        assert len(pref) == 2
        assert [s["passed"] for s in pref] == judge.wins([s["prompt"] for s in pref], [s["generation"] for s in pref],
                                                         [s["reference"] for s in pref])


def test_the_reward_model_judge_needs_a_model():
    with pytest.raises(ValueError, match="pref_judge 'reward_model' needs reward_model"):
        TrialConfig.model_validate({"behaviour": {"pref_judge": "reward_model"}})
    spec = TrialConfig.model_validate({"data": {"pref": {"source": "some/hub-set", "preset": "hh"}},
                                       "behaviour": {"reward_model": "/models/rm"}})
    assert spec.behaviour.pref_judge_for(spec.data) == "reward_model", "a reward model set is the default judge"
