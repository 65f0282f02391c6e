"""Generation on held-out prompts, on the embedded model and data."""

import numpy as np
import pytest
import torch

from workers.config import DataSpec
from workers.data import load_tokenized
from workers.generate import generate, held_out_prompts
from workers.model import load_policy


@pytest.fixture(scope="module")
def tables(cache_dir, tokenizer):
    data = DataSpec.model_validate({"max_len": 64})
    data = data.model_copy(update={"sft": data.sft.resolved("sft"), "pref": data.pref.resolved("pref")})
    return load_tokenized(data, tokenizer, cache_dir)


@pytest.fixture(scope="module")
def base(cache_dir):
    from workers.config import ModelSpec

    return load_policy(ModelSpec(), cache_dir, torch.device("cpu"), lora=False, dtype=torch.float32).eval()


def test_prompts_are_the_rows_before_their_response_and_references_the_response(tables, tokenizer):
    sft_eval, pref_eval = tables[1], tables[3]
    prompts = held_out_prompts(sft_eval, "input_ids", "loss_mask", tokenizer, 8)
    assert len(prompts.ids) == 8
    for i, (ids, reference) in enumerate(zip(prompts.ids, prompts.references)):
        row, mask = sft_eval["input_ids"][i], sft_eval["loss_mask"][i]
        assert not mask[: len(ids)].any() and mask[len(ids)], "the prompt ends where the response starts"
        assert tokenizer.decode(row) == tokenizer.decode(ids) + reference + tokenizer.eos_token
    pref = held_out_prompts(pref_eval, "chosen_ids", "chosen_mask", tokenizer, 4)
    assert all(r.strip().startswith("sure! ") for r in pref.references), "the chosen responses of the embedded data"
    # Ranks split the prompts: every world-th, together all of them once.
    shares = [held_out_prompts(sft_eval, "input_ids", "loss_mask", tokenizer, 7, rank, 3) for rank in range(3)]
    assert sorted(r for s in shares for r in s.references) == sorted(
        held_out_prompts(sft_eval, "input_ids", "loss_mask", tokenizer, 7).references)


def greedy_alone(model, tokenizer, prompt: np.ndarray, new: int) -> str:
    """One prompt, no padding, no KV cache: the argmax of a full forward per token."""
    ids = torch.as_tensor(prompt, dtype=torch.long)[None]
    out = []
    for _ in range(new):
        token = int(model(ids).logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(out, skip_special_tokens=True)


@torch.no_grad()
def test_batched_left_padded_generation_is_greedy_decoding_of_each_prompt(tables, tokenizer, base):
    prompts = held_out_prompts(tables[1], "input_ids", "loss_mask", tokenizer, 6)
    assert len({len(p) for p in prompts.ids}) > 1, "prompts of several lengths: left padding is exercised"
    batched = generate(base, tokenizer, prompts.ids, batch_size=4, max_new_tokens=10, device=torch.device("cpu"))
    assert batched == [greedy_alone(base, tokenizer, p, 10) for p in prompts.ids]
    assert all(isinstance(g, str) for g in batched) and any(batched)
