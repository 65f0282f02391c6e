"""The reference pass split over processes: the same bits as one process, one pass recorded."""

import json
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from orchestrator.trial import prepare_in_stages
from workers.config import TrialConfig
from workers.data import cached_tokenized
from workers.inputs import load_inputs
from workers.reference import compute_shard, merge_shards, pair_sets, reference_path, shard_bounds


def test_shard_bounds_are_whole_batches_covering_every_row_once():
    assert shard_bounds(200, 64, 2) == [(0, 128), (128, 200)]  # 4 batches: 2 and 2, the last one short
    assert shard_bounds(64, 64, 3) == [(0, 64)]  # one batch: one shard, no empty ones
    for rows, batch, shards in ((1, 8, 4), (1000, 7, 3), (130, 64, 5)):
        bounds = shard_bounds(rows, batch, shards)
        assert bounds[0][0] == 0 and bounds[-1][1] == rows
        assert all(a % batch == 0 and b > a for a, b in bounds) and all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))


def test_two_processes_give_the_single_pass_bits_and_record_one_pass(cache_dir, tokenizer):
    """Two spawned processes, each its half of the pairs in whole eval batches, merged into
    the one cache file: equal to the last bit to one process computing them all, and
    passes.jsonl gains one line; a trial then reads the cache and adds none."""
    cfg = TrialConfig.model_validate({"cache_dir": cache_dir, "data": {"max_len": 20},  # truncates: ids (a key) of this test alone
                                      "train": {"eval_batch_size": 128}}).resolved()
    cpu = torch.device("cpu")
    _, _, pref_train, pref_eval = cached_tokenized(cfg.data, tokenizer, cache_dir)
    tables = {"train": pref_train, "eval": pref_eval}
    whole = pair_sets(cfg, tables, cpu)
    single = merge_shards([compute_shard(cfg, tokenizer, tables, {"index": 0, "shards": 1, "parts": whole}, cpu)])

    passes = Path(cache_dir) / "reference" / "passes.jsonl"
    before = passes.read_text().splitlines() if passes.exists() else []
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        prepare_in_stages(pool.submit, Future.result, cfg.model_dump(), 1, 2)
    added = passes.read_text().splitlines()[len(before):]
    assert len(added) == 1, "one pass, however many processes computed it"
    record = json.loads(added[0])
    assert record["processes"] == 2 and record["pairs"] == len(pref_train) + len(pref_eval)
    assert sorted(record["fingerprints"]) == sorted(p["fingerprint"] for p in whole)

    from safetensors.torch import load_file

    for p in whole:
        cached = load_file(reference_path(cache_dir, p["fingerprint"]))
        assert torch.equal(cached["chosen"], single[p["fingerprint"]][0])
        assert torch.equal(cached["rejected"], single[p["fingerprint"]][1])
    inputs = load_inputs(cfg, cpu)
    assert inputs.pref_train["ref_chosen"] == single[whole[0]["fingerprint"]][0].tolist()
    assert passes.read_text().splitlines()[len(before):] == added, "a trial reads the pass, it does not make one"
