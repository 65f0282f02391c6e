"""The lm-evaluation-harness hook: names of its scores, and (with the ``harness`` extra) a
tiny local multiple-choice task run on a trial's final model."""

import json
import math

import pytest

from workers.config import ConfigError, TrialConfig
from workers.harness import metric_name
from workers.loop import fit
from workers.session import LocalSession


def test_harness_metric_names_keep_the_task_metric_and_a_filter_other_than_none():
    assert metric_name("mmlu", "acc,none") == "harness/mmlu/acc"
    assert metric_name("gsm8k", "exact_match,strict-match") == "harness/gsm8k/exact_match_strict-match"
    assert metric_name("a:b", "acc") == "harness/a_b/acc"


def tiny_task(folder, rows):
    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tiny_next.yaml").write_text(
        "task: tiny_next\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: \"User: what comes after {{n}}\\nAssistant:\"\n"
        "doc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: \"{{answer}}\"\n"
        "metric_list:\n  - metric: acc\n"
    )


def harness_trial(cache_dir, **behaviour):
    return TrialConfig.model_validate({
        "cache_dir": cache_dir, "data": {"max_len": 64},
        "train": {"schedule": "sequential", "lam": 0.0, "total_steps": 60, "eval_every": 60, "batch_size": 16, "lr": 3e-3},
        "behaviour": {"prompts": 0, **behaviour},
    }).resolved()


def test_a_local_task_runs_on_the_final_model_only(cache_dir, tmp_path):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'rightsweep[harness]')")
    rows = [{"n": n, "choices": [f" {n + 1}", f" {n + 7}"], "answer": 0} for n in range(10, 16)]
    tiny_task(tmp_path, rows)
    traj = fit(harness_trial(cache_dir, harness_tasks=["tiny_next"], harness_include=str(tmp_path), harness_limit=4),
               LocalSession())
    assert not any(k.startswith("harness/") for p in traj[:-1] for k in p), "the harness runs on the final model only"
    acc = traj[-1]["harness/tiny_next/acc"]
    assert 0 <= acc <= 1 and math.isclose(acc * 4, round(acc * 4)), "a share of the 4 documents the limit allows"


def test_harness_tasks_without_the_harness_fail_before_training(cache_dir, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_harness(name, *args, **kwargs):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_harness)
    with pytest.raises(ConfigError, match=r"harness_tasks needs lm-evaluation-harness.*rightsweep\[harness\]"):
        fit(harness_trial(cache_dir, harness_tasks=["mmlu"]), LocalSession())
