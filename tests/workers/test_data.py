import json
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.config import DatasetSpec, TrialConfig
from workers.data import (
    BatchStream,
    Rows,
    TokenTable,
    collate_pairs,
    collate_sft,
    eval_batches,
    load_split,
    load_table,
    load_tokenized,
    read_rows,
    split_by_prompt,
    tokenize,
)


def response_text(tokenizer, ids, mask):
    return tokenizer.decode([t for t, m in zip(ids, mask) if m])


def prompt_text(tokenizer, ids, mask):
    return tokenizer.decode([t for t, m in zip(ids, mask) if not m])


def gpt2_style_tokenizer(texts):
    """A GPT-2-style byte-level BPE (a space starts a word: 'Ġ4'), trained here offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def test_alpaca_input_is_in_prompt_and_only_response_carries_loss(shared_fixture, tokenizer):
    path = shared_fixture("alpaca_tiny.json")
    spec = DatasetSpec(source=str(path)).resolved("sft")
    table = load_table(spec.source, "train")
    raw = list(table)
    assert sum(bool(r["input"].strip()) for r in raw) == 46
    encoded, counts = tokenize(read_rows(table, spec, "sft"), "sft", tokenizer, max_len=4096)
    assert counts.rows == 100 and counts.truncated == 0 and counts.dropped == 0
    for row, ids, mask in zip(raw, encoded["input_ids"], encoded["loss_mask"]):
        prompt = f"User: {row['instruction']}" + (f"\n\n{row['input']}" if row["input"].strip() else "") + "\nAssistant: "
        # The prompt's tokens are a prefix of the prompt; the seam token (the space and the
        # response's first characters) is the response's.
        assert prompt.startswith(prompt_text(tokenizer, ids, mask))
        assert prompt_text(tokenizer, ids, mask) + response_text(tokenizer, ids, mask) == prompt + row["output"] + tokenizer.eos_token
        assert response_text(tokenizer, ids, mask).strip().startswith(row["output"].strip()[:1])
        assert mask[0] == 0 and mask[-1] == 1 and ids[-1] == tokenizer.eos_token_id


def test_training_ids_are_the_ids_of_the_full_text(shared_fixture, tokenizer):
    """Prompt and response tokenized as one text, as in pre-training: tokenized apart, the
    prompt ended in a lone space token and '42' became '4','2' instead of 'Ġ4','2'. With the
    embedded tokenizer and with a GPT-2-style byte-level BPE, on Alpaca rows and preference
    pairs, every training sequence is exactly the full text's ids plus EOS."""
    alpaca = DatasetSpec(source=str(shared_fixture("alpaca_tiny.json"))).resolved("sft")
    stack = DatasetSpec(source=str(shared_fixture("stack_exchange_paired_tiny.json")), preset="custom",
                        columns={"prompt": "question", "chosen": "response_j", "rejected": "response_k"}).resolved("pref")
    sft_rows = read_rows(load_table(alpaca.source, "train"), alpaca, "sft")
    pair_rows = read_rows(load_table(stack.source, "train"), stack, "pref")
    embedded_rows = Rows(["User: what comes after 41\nAssistant: "], [("42",)])
    gpt2 = gpt2_style_tokenizer([p + r[0] for p, r in zip(sft_rows.prompts, sft_rows.responses)] + ["Assistant: 42"])
    for tok in (tokenizer, gpt2):
        for rows, kind in ((sft_rows, "sft"), (pair_rows, "pref"), (embedded_rows, "sft")):
            table, counts = tokenize(rows, kind, tok, max_len=100_000)
            assert counts.rows == len(rows) and counts.dropped == 0
            columns = [("input_ids", "loss_mask")] if kind == "sft" else [("chosen_ids", "chosen_mask"), ("rejected_ids", "rejected_mask")]
            for k, (ids_col, mask_col) in enumerate(columns):
                for prompt, responses, ids, mask in zip(rows.prompts, rows.responses, table[ids_col], table[mask_col]):
                    assert ids.tolist() == tok(prompt + responses[k])["input_ids"] + [tok.eos_token_id]
                    n_prompt = int((mask == 0).sum())
                    assert mask[:n_prompt].sum() == 0 and mask[n_prompt:].all(), "the prompt is a prefix"
                    assert prompt.startswith(tok.decode(ids[:n_prompt].tolist()))


def test_stack_exchange_through_column_mapping_counts_truncation(shared_fixture, tokenizer):
    path = shared_fixture("stack_exchange_paired_tiny.json")
    spec = DatasetSpec(
        source=str(path), preset="custom", columns={"prompt": "question", "chosen": "response_j", "rejected": "response_k"}
    ).resolved("pref")
    table = load_table(spec.source, "train")
    assert len(table) == 25
    max_len = 512
    full = [(tokenizer(spec.template.replace("{prompt}", q) + c)["input_ids"], tokenizer(spec.template.replace("{prompt}", q) + r)["input_ids"])
            for q, c, r in zip(table["question"], table["response_j"], table["response_k"])]
    prompt_lens = [len(tokenizer(spec.template.replace("{prompt}", q))["input_ids"]) for q in table["question"]]
    expected_dropped = sum(p >= max_len for p in prompt_lens)
    assert 0 < expected_dropped < 25, "fixture should have some prompts longer than max_len"
    pairs, counts = tokenize(read_rows(table, spec, "pref"), "pref", tokenizer, max_len=max_len)
    # The prompt's share of the joint text is its own tokens, less the seam token at most.
    assert abs(counts.dropped - expected_dropped) <= 1
    assert counts.rows == 25 - counts.dropped == len(pairs)
    assert counts.truncated > 0
    assert counts.truncated <= sum(max(len(c), len(r)) + 1 > max_len for c, r in full)
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
    split = load_split(spec, "pref", seed=0, cache_dir=str(tmp_path))
    train, held = tokenize(split.train, "pref", tokenizer, 64)[0], tokenize(split.held, "pref", tokenizer, 64)[0]
    assert len(train) == 25 and len(held) == 5
    decode = lambda table: {tokenizer.decode(ids) for ids in table["chosen_ids"]}  # noqa: E731
    assert not decode(train) & decode(held), "held-out pairs must not be training pairs"
    ids, mask = held["chosen_ids"][0], held["chosen_mask"][0]
    assert tokenizer.decode(ids).startswith("\n\nHuman: question")
    assert response_text(tokenizer, ids, mask).startswith(" good ")


def test_split_is_by_prompt_and_drops_exact_duplicates():
    """Rows: p0 ×2 identical (one is a duplicate), p1 with two different responses, p2..p5
    once. Holding out 3 rows takes whole prompts; no held-out prompt keeps a training row."""
    rows = Rows(["p0", "p0", "p1", "p1", "p2", "p3", "p4", "p5"], [("a",), ("a",), ("b",), ("c",), ("d",), ("e",), ("f",), ("g",)])
    for seed in range(20):
        train, held, counts = split_by_prompt(rows, DatasetSpec(eval_size=3), seed=seed, field="trial.data.sft")
        assert counts.duplicates == 1 and counts.shared_prompt == 2
        assert len(held) == 3 and not set(held.prompts) & set(train.prompts)
        assert len(train) + len(held) + counts.unused == 7
        assert counts.held_prompts == len(set(held.prompts))
    with pytest.raises(ValueError, match="trial.data.sft.eval_size: the data has 6 distinct prompts"):
        split_by_prompt(rows, DatasetSpec(eval_size=7), seed=0, field="trial.data.sft")


def test_the_default_eval_size_is_64_or_a_fifth_of_a_small_datasets_prompts():
    """25 distinct prompts: 5 held out, 20 to train on (64 would leave none); 320 or more: 64."""
    rows = Rows([f"p{i}" for i in range(25)], [(f"r{i}",) for i in range(25)])
    train, held, _ = split_by_prompt(rows, DatasetSpec(), seed=0, field="trial.data.sft")
    assert (len(train), len(held)) == (20, 5)
    assert [DatasetSpec().held_out(n) for n in (1, 4, 9, 319, 320, 5000)] == [1, 1, 1, 63, 64, 64]
    assert DatasetSpec(eval_size=7).held_out(25) == 7


def test_embedded_held_out_prompts_are_unseen(cache_dir, tokenizer):
    """On the embedded data every held-out prompt (64 per dataset) is absent from both
    training sets and from the base model's pre-training text: index splits left 63 of 64
    SFT and 64 of 64 preference held-out rows as copies of training rows."""
    from workers.embedded import RECIPE, _warmup_texts

    data = TrialConfig.model_validate({"cache_dir": cache_dir, "data": {"max_len": 64}}).resolved().data
    sft_train, sft_eval, pref_train, pref_eval = load_tokenized(data, tokenizer, cache_dir)
    prompts = lambda t, ids, m: {prompt_text(tokenizer, a, b) for a, b in zip(t[ids], t[m])}  # noqa: E731
    held = prompts(sft_eval, "input_ids", "loss_mask") | prompts(pref_eval, "chosen_ids", "chosen_mask")
    trained = prompts(sft_train, "input_ids", "loss_mask") | prompts(pref_train, "chosen_ids", "chosen_mask")
    assert len(prompts(sft_eval, "input_ids", "loss_mask")) == 64 and len(prompts(pref_eval, "chosen_ids", "chosen_mask")) == 64
    assert not held & trained
    pretrained = {text.split("Assistant:")[0] for text in _warmup_texts(RECIPE)}
    assert not {p.split("Assistant:")[0] for p in held} & pretrained
    assert len(sft_train) > 1800 and len(pref_train) > 1800


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


def _token_cache(data, tokenizer, cache_dir):
    from workers.data import tokens_fingerprint

    return Path(cache_dir) / "tokens" / f"{tokens_fingerprint(data, tokenizer, cache_dir)}.safetensors"


def _same_tables(a, b):
    for x, y in zip(a, b):
        assert x.columns.keys() == y.columns.keys() and len(x) == len(y)
        for k in x.columns:
            assert np.array_equal(x[k].values, y[k].values) and np.array_equal(x[k].offsets, y[k].offsets), k


def test_token_cache_miss_then_hit_with_the_same_tables_and_log_lines(cache_dir, tokenizer, caplog):
    """The first read tokenizes and writes one compact file (flat arrays and offsets); the
    next reads it back, the same arrays, and logs the split and truncation counts again."""
    from workers.data import cached_tokenized

    data = TrialConfig.model_validate({"cache_dir": cache_dir, "data": {"max_len": 40}}).resolved().data
    path = _token_cache(data, tokenizer, cache_dir)
    path.unlink(missing_ok=True)
    with caplog.at_level("INFO", logger="rightsweep.data"):
        first = cached_tokenized(data, tokenizer, cache_dir)
    counted = [r.getMessage() for r in caplog.records if r.name == "rightsweep.data"]
    assert path.exists() and len(counted) == 6 and "pref train data: " in counted[4]
    _same_tables(first, load_tokenized(data, tokenizer, cache_dir))
    caplog.clear()
    with caplog.at_level("INFO", logger="rightsweep.data"):
        again = cached_tokenized(data, tokenizer, cache_dir)
    lines = [r.getMessage() for r in caplog.records if r.name == "rightsweep.data"]
    assert lines[:6] == counted and "token tables read from the token cache" in lines[6]
    _same_tables(first, again)
    assert again[2]["chosen_ids"].values.dtype == np.int32 and again[2]["chosen_mask"].values.dtype == np.int8


def test_token_cache_key_follows_what_the_ids_depend_on(cache_dir, tokenizer, tmp_path, shared_fixture):
    """max_len, the template, the held-out seed and a local file's bytes each change the key;
    a training option does not."""
    from workers.data import tokens_fingerprint

    def key(**data):
        return tokens_fingerprint(TrialConfig.model_validate({"cache_dir": cache_dir, "data": data}).resolved().data,
                                  tokenizer, cache_dir)

    base = key()
    assert len({base, key(max_len=100), key(seed=1), key(pref={"template": "Q: {prompt}"}),
                key(sft={"eval_size": 32})}) == 5
    path = tmp_path / "alpaca.json"
    path.write_bytes(shared_fixture("alpaca_tiny.json").read_bytes())
    before = key(sft={"source": str(path)})
    path.write_text(path.read_text().replace("a", "b", 1))
    assert key(sft={"source": str(path)}) != before


def test_a_damaged_token_cache_is_recomputed_with_a_warning(cache_dir, tokenizer, caplog):
    """A flipped byte, a truncated file, and a file with a valid hash that lacks a table are
    each reported and tokenized again, and the rewritten file is then read as it is."""
    from safetensors.numpy import save_file

    from workers.cache import content_digest
    from workers.data import cached_tokenized

    data = TrialConfig.model_validate({"cache_dir": cache_dir, "data": {"max_len": 44}}).resolved().data
    good = cached_tokenized(data, tokenizer, cache_dir)
    path = _token_cache(data, tokenizer, cache_dir)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    _same_tables(cached_tokenized(data, tokenizer, cache_dir), good)
    assert "does not match the content hash stored with it" in caplog.text
    path.write_bytes(path.read_bytes()[:100])
    _same_tables(cached_tokenized(data, tokenizer, cache_dir), good)
    assert "token cache" in caplog.text and "is unreadable" in caplog.text
    one = {"sft_train.input_ids.values": np.zeros(3, np.int32), "sft_train.input_ids.offsets": np.array([0, 3])}
    save_file(one, path, metadata={"sha256": content_digest(one), "notes": "[]"})
    _same_tables(cached_tokenized(data, tokenizer, cache_dir), good)
    assert "does not hold the token tables" in caplog.text
    caplog.clear()
    cached_tokenized(data, tokenizer, cache_dir)
    assert "recomputing" not in caplog.text


def test_ragged_rows_are_views_of_one_flat_array():
    from workers.data import Ragged

    col = Ragged.from_sequences([[1, 2], [], [3, 4, 5]])
    assert len(col) == 3 and col[2].tolist() == [3, 4, 5] and col[1].tolist() == []
    assert np.shares_memory(col[2], col.values)
    tail = col[1:]
    assert len(tail) == 2 and tail.offsets.tolist() == [0, 0, 3] and [s.tolist() for s in tail] == [[], [3, 4, 5]]
    with pytest.raises(ValueError, match="offsets do not index"):
        Ragged(np.zeros(3, np.int32), np.array([0, 4]))
