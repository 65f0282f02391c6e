"""``rightsweep inspect``: its counts are the tokenizer pipeline's, its suggestion works, and it
refuses what the sweep refuses, in the same words — in seconds, without Ray."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from orchestrator.inspection import Lengths, characters_per_token, fit_counts, suggested_max_len, token_lengths, whole_max_len
from tests.conftest import ROOT
from workers.config import DatasetSpec
from workers.data import Rows, load_split, tokenize


def test_the_suggested_max_len_by_hand():
    """Whole lengths (longest response) 10, 20, …, 200: 95 % of 20 rows is the 19th, 190
    (192 as a multiple of 8). A split whose one prompt is 250 tokens needs 251 (256); the
    model's positions cap either."""
    a = Lengths(np.full(20, 5), np.array([[v, 1] for v in range(10, 201, 10)]))
    assert whole_max_len([a]) == 190
    assert whole_max_len([a], share=0.9) == 180
    b = Lengths(np.array([250]), np.array([[260]]))
    assert suggested_max_len([a], None) == 192
    assert suggested_max_len([a, b], None) == 256
    assert suggested_max_len([a, b], 128) == 128
    b = Lengths(np.array([250, 300]), np.array([[260], [310]]))
    counts = fit_counts(b, 255)  # the first cut (260 > 255), the second dropped (300 >= 255)
    assert (counts.rows, counts.truncated, counts.dropped) == (1, 1, 1)


def test_characters_per_token_by_hand():
    """A pair: prompt "ab" (1 token), responses "cde" (2 tokens + EOS) and "f" (1 + EOS): the
    prompt is in both sequences, so 2·2 + 3 + 1 = 8 characters over 2·1 + 2 + 1 = 5 tokens."""
    assert characters_per_token(Rows(["ab"], [("cde", "f")]), Lengths(np.array([1]), np.array([[4, 3]]))) == 1.6


def check_counts(rows, kind, tokenizer):
    x = token_lengths(rows, tokenizer)
    for max_len in (8, 16, 32, 64, 128, 1024, 4096):
        assert str(fit_counts(x, max_len)) == str(tokenize(rows, kind, tokenizer, max_len)[1]), (kind, max_len)


def test_the_counts_are_tokenizes_on_generated_rows(tokenizer):
    rows = Rows([f"User: {'word ' * n}\nAssistant: " for n in range(0, 60, 3)],
                [(f"{'a' * (5 * n)}", f"{'b' * n}") for n in range(20)])
    check_counts(rows, "pref", tokenizer)
    check_counts(Rows(rows.prompts, [(c,) for c, _ in rows.responses]), "sft", tokenizer)


def test_the_counts_are_tokenizes_on_the_real_fixtures(shared_fixture, tokenizer, tmp_path):
    alpaca = DatasetSpec(source=str(shared_fixture("alpaca_tiny.json"))).resolved("sft")
    stack = DatasetSpec(source=str(shared_fixture("stack_exchange_paired_tiny.json")), preset="custom",
                        columns={"prompt": "question", "chosen": "response_j", "rejected": "response_k"}).resolved("pref")
    check_counts(load_split(alpaca, "sft", 0, str(tmp_path)).train, "sft", tokenizer)
    check_counts(load_split(stack, "pref", 0, str(tmp_path)).train, "pref", tokenizer)


@pytest.fixture
def own(tmp_path, embedded_root):
    """A user's own model folder (the embedded base saved with 4096 positions: rotary, the
    same weights) and a 25-pair file of 5 prompts with long questions."""
    model = tmp_path / "my-model"
    shutil.copytree(embedded_root / "base", model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"q": f"question {p}: " + "why " * (40 * (p + 1)), "good": f"answer {i} " * 20,
                                          "bad": f"no {i}"}) + "\n" for p in range(5) for i in range(5)))
    return model, pairs


def inspect(*sets: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", "inspect", "--config", "smoke",
                           *(a for s in sets for a in ("--set", s))], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_inspect_reports_refuses_like_the_sweep_and_its_suggestion_works(own, tmp_path, cache_dir):
    """The smoke preset holds out 32 pairs, more than 5 prompts hold; its max_len 64 fits no
    question. One inspect names both, with the settings that work; with them it passes."""
    model, pairs = own
    base = [f"trial.model.name={model}", f"storage={tmp_path / 'results'}", f"trial.cache_dir={cache_dir}",
            f"trial.data.pref={{source: {pairs}, preset: custom, columns: {{prompt: q, chosen: good, rejected: bad}}}}"]
    first = inspect(*base)
    assert first.returncode == 2, first.stderr
    assert "rightsweep: config error: trial.data.pref.eval_size: the data has 5 distinct prompts (25 rows)" in first.stderr
    assert "4096 positions" in first.stdout and "  train at max_len 64: 0 rows" in first.stdout.split("pref data:")[1]
    fix = first.stdout.split("settings that would work: ")[1].split()
    assert fix[0::2] == ["--set"] * (len(fix) // 2) and "trial.data.pref.eval_size=1" in fix
    assert not (tmp_path / "results" / "smoke").exists(), "inspect starts no sweep"
    second = inspect(*base, *fix[1::2])
    assert second.returncode == 0, second.stderr
    assert second.stdout.rstrip().endswith("settings that would work: these")


def test_a_max_len_beyond_the_models_positions_is_refused(tmp_path, cache_dir):
    r = inspect(f"storage={tmp_path}", f"trial.cache_dir={cache_dir}", "trial.data.max_len=256")
    assert r.returncode == 2
    assert ("rightsweep: config error: trial.data.max_len: 256 is longer than the 128 positions of the model 'embedded'; "
            "allowed: at most 128") in r.stderr
