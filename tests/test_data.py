import json

import numpy as np
import pytest
import torch

from workers.config import DatasetSpec
from workers.data import (
    BatchStream,
    TokenTable,
    collate_pairs,
    collate_sft,
    eval_batches,
    load_split_tokenized,
    load_table,
    tokenize_pairs,
    tokenize_sft,
)


def response_text(tokenizer, ids, mask):
    return tokenizer.decode([t for t, m in zip(ids, mask) if m])


def test_alpaca_input_is_in_prompt_and_only_response_carries_loss(shared_fixture, tokenizer):
    path = shared_fixture("alpaca_tiny.json")
    spec = DatasetSpec(source=str(path)).resolved("sft")
    table = load_table(spec.source, "train")
    rows = list(table)
    assert sum(bool(r["input"].strip()) for r in rows) == 46
    encoded, counts = tokenize_sft(table, spec, tokenizer, max_len=4096)
    assert counts.rows == 100 and counts.truncated == 0 and counts.dropped == 0
    for row, ids, mask in zip(rows, encoded["input_ids"], encoded["loss_mask"]):
        prompt = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
        assert prompt == f"User: {row['instruction']}" + (f"\n\n{row['input']}" if row["input"].strip() else "") + "\nAssistant: "
        assert response_text(tokenizer, ids, mask) == row["output"] + tokenizer.eos_token
        assert mask[0] == 0 and mask[-1] == 1 and ids[-1] == tokenizer.eos_token_id


def test_stack_exchange_through_column_mapping_counts_truncation(shared_fixture, tokenizer):
    path = shared_fixture("stack_exchange_paired_tiny.json")
    spec = DatasetSpec(
        source=str(path), preset="custom", columns={"prompt": "question", "chosen": "response_j", "rejected": "response_k"}
    ).resolved("pref")
    table = load_table(spec.source, "train")
    assert len(table) == 25
    max_len = 512
    prompt_lens = [len(tokenizer(spec.template.replace("{prompt}", q))["input_ids"]) for q in table["question"]]
    full_lens = [
        max(len(tokenizer(spec.template.replace("{prompt}", q) + c)["input_ids"]), len(tokenizer(spec.template.replace("{prompt}", q) + r)["input_ids"]))
        for q, c, r in zip(table["question"], table["response_j"], table["response_k"])
    ]
    expected_dropped = sum(p >= max_len for p in prompt_lens)
    assert 0 < expected_dropped < 25, "fixture should have some prompts longer than max_len"
    pairs, counts = tokenize_pairs(table, spec, tokenizer, max_len=max_len)
    assert counts.dropped == expected_dropped
    assert counts.rows == 25 - expected_dropped == len(pairs)
    # Every kept pair whose untruncated length exceeds max_len counts as truncated.
    expected_truncated = sum(f + 1 > max_len for f, p in zip(full_lens, prompt_lens) if p < max_len)
    assert counts.truncated > 0
    assert abs(counts.truncated - expected_truncated) <= 2  # BPE merges across the prompt/response seam
    for col in ("chosen_ids", "rejected_ids"):
        assert all(len(s) <= max_len for s in pairs[col])
    for ids, mask in zip(pairs["chosen_ids"], pairs["chosen_mask"]):
        assert len(ids) == len(mask) and mask.sum() >= 1


def test_hh_schema_file_and_held_out_split(tmp_path, tokenizer):
    """rm-hh-rlhf's schema: prompt already in Human/Assistant form, plus a response column we ignore."""
    rows = [
        {"prompt": f"\n\nHuman: question {i}?\n\nAssistant:", "response": " r", "chosen": f" good {i}", "rejected": f" bad {i}"}
        for i in range(30)
    ]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DatasetSpec(source=str(path), eval_size=5).resolved("pref")
    assert spec.template == "{prompt}"
    train, held = load_split_tokenized(spec, "pref", tokenizer, max_len=64, seed=0, cache_dir=str(tmp_path))
    assert len(train) == 25 and len(held) == 5
    decode = lambda table: {tokenizer.decode(ids) for ids in table["chosen_ids"]}
    assert not decode(train) & decode(held), "held-out pairs must not be training pairs"
    ids, mask = held["chosen_ids"][0], held["chosen_mask"][0]
    assert tokenizer.decode(ids).startswith("\n\nHuman: question")
    assert response_text(tokenizer, ids, mask).startswith(" good ")


def test_missing_column_and_missing_file_are_clear(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"instruction": "x", "answer": "y"}) + "\n")
    spec = DatasetSpec(source=str(path)).resolved("sft")
    with pytest.raises(ValueError, match=r"has no column\(s\) \['input', 'output'\]"):
        tokenize_sft(load_table(spec.source, "train"), spec, tokenizer, 32)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_table(str(tmp_path / "nope.json"), "train")


def test_collate_pads_right_and_masks():
    sft = collate_sft({"input_ids": [np.array([5, 6, 7]), np.array([8])], "loss_mask": [np.array([0, 1, 1]), np.array([1])]}, pad_id=0)
    assert torch.equal(sft["input_ids"], torch.tensor([[5, 6, 7], [8, 0, 0]]))
    assert torch.equal(sft["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
    assert torch.equal(sft["loss_mask"], torch.tensor([[0, 1, 1], [1, 0, 0]]))
    pairs = collate_pairs(
        {
            "chosen_ids": [np.array([1, 2])], "chosen_mask": [np.array([0, 1])],
            "rejected_ids": [np.array([1, 3, 4])], "rejected_mask": [np.array([0, 1, 1])],
            "ref_chosen": [-1.5], "ref_rejected": [-2.5],
        },
        pad_id=9,
    )
    assert torch.equal(pairs["input_ids"], torch.tensor([[1, 2, 9], [1, 3, 4]]))  # chosen rows first
    assert torch.equal(pairs["ref_chosen"], torch.tensor([-1.5]))


def _stream(n=20, bs=3, rank=0, world=1, seed=0):
    table = TokenTable({"input_ids": [[i] for i in range(n)], "loss_mask": [[1]] * n})
    return BatchStream(table, bs, seed, lambda rows: [int(x[0]) for x in rows["input_ids"]], rank, world)


def test_batch_stream_advances_only_on_next_and_reshuffles_per_epoch():
    s = _stream()
    assert s.batches_per_epoch == 6
    first = s.peek()
    assert s.peek() == first and s.position == 0, "peek does not consume"
    assert s.next() == first and s.position == 1
    epoch0 = [first] + [s.next() for _ in range(5)]
    assert s.epoch == 1 and s.position == 0
    epoch1 = [s.next() for _ in range(6)]
    assert sorted(sum(epoch1, [])) != sum(epoch1, []), "shuffled"
    assert len(set(sum(epoch0, []))) == 18 and len(set(sum(epoch1, []))) == 18
    assert epoch0 != epoch1


def test_batch_stream_ranks_are_disjoint_and_equal_length():
    a, b = _stream(n=21, bs=2, rank=0, world=2), _stream(n=21, bs=2, rank=1, world=2)
    assert a.batches_per_epoch == b.batches_per_epoch == 5
    seen_a = sum((a.next() for _ in range(5)), [])
    seen_b = sum((b.next() for _ in range(5)), [])
    assert not set(seen_a) & set(seen_b)


def test_batch_stream_state_round_trip():
    s = _stream(seed=4)
    for _ in range(8):
        s.next()
    state = json.loads(json.dumps(s.state_dict()))
    expected = [s.next() for _ in range(10)]
    t = _stream(seed=4)
    t.load_state_dict(state)
    assert [t.next() for _ in range(10)] == expected


def test_batch_stream_too_small_is_an_error():
    with pytest.raises(ValueError, match="cannot fill one batch of 8 on each of 2 worker"):
        _stream(n=10, bs=8, world=2)


def test_eval_batches_cover_every_row_once_across_ranks():
    table = TokenTable({"input_ids": [[i] for i in range(11)], "loss_mask": [[1]] * 11})
    collate = lambda rows: [int(x[0]) for x in rows["input_ids"]]
    seen = [x for r in range(3) for b in eval_batches(table, 2, collate, r, 3) for x in b]
    assert sorted(seen) == list(range(11))
