"""How anchor trials hand f* to MAXRIGHT trials of the same Tune experiment: through files
on the sweep's storage, one per objective and seed."""

import threading
import time

import pytest

from orchestrator.space import Point
from orchestrator.trial import anchor_file, publish_anchor, wait_for_anchors


def anchor(objective: str, seed: int) -> Point:
    return Point("anchor", "sequential", 0.0 if objective == "sft" else 1.0, seed, objective)


def test_a_maxright_trial_waits_for_every_anchor_seed_and_takes_the_mean(tmp_path):
    got = {}
    waiter = threading.Thread(target=lambda: got.update(wait_for_anchors(tmp_path, [0, 1], poll_s=0.01)))
    waiter.start()
    publish_anchor(tmp_path, anchor("dpo", 0), {"best": 0.25})
    publish_anchor(tmp_path, anchor("sft", 0), {"best": 1.5})
    publish_anchor(tmp_path, anchor("dpo", 1), {"best": 0.75})
    time.sleep(0.1)
    assert waiter.is_alive() and not got, "seed 1's SFT anchor is still missing"
    publish_anchor(tmp_path, anchor("sft", 1), {"best": 2.5})
    waiter.join(timeout=5)
    assert got == {"f_star_sft": 2.0, "f_star_dpo": 0.5}  # the means of each seed's best
    assert sorted(p.name for p in anchor_file(tmp_path, anchor("sft", 0)).parent.iterdir()) == [
        "dpo-seed0.json", "dpo-seed1.json", "sft-seed0.json", "sft-seed1.json"]


def test_a_failed_anchor_fails_the_waiting_trial_with_its_reason(tmp_path):
    publish_anchor(tmp_path, anchor("sft", 1), {"error": "anchor-sft-seed1 failed: training diverged"})
    with pytest.raises(RuntimeError, match="f\\* cannot be estimated: anchor-sft-seed1 failed: training diverged"):
        wait_for_anchors(tmp_path, [0, 1], poll_s=0.01)
