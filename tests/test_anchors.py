"""How anchor trials hand f* to MAXRIGHT trials of the same Tune experiment: through files
on the sweep's storage."""

import threading
import time

import pytest

from orchestrator.trial import anchor_file, publish_anchor, wait_for_anchors


def test_a_maxright_trial_waits_for_both_anchors(tmp_path):
    got = {}
    waiter = threading.Thread(target=lambda: got.update(wait_for_anchors(tmp_path, poll_s=0.01)))
    waiter.start()
    publish_anchor(tmp_path, "dpo", {"f_star": 0.25})
    time.sleep(0.1)
    assert waiter.is_alive() and not got, "one anchor is not enough"
    publish_anchor(tmp_path, "sft", {"f_star": 1.5})
    waiter.join(timeout=5)
    assert got == {"f_star_sft": 1.5, "f_star_dpo": 0.25}
    assert sorted(p.name for p in anchor_file(tmp_path, "sft").parent.iterdir()) == ["dpo.json", "sft.json"]


def test_a_failed_anchor_fails_the_waiting_trial_with_its_reason(tmp_path):
    publish_anchor(tmp_path, "sft", {"error": "anchor-sft-seed0 failed: training diverged"})
    with pytest.raises(RuntimeError, match="f\\* cannot be estimated: anchor-sft-seed0 failed: training diverged"):
        wait_for_anchors(tmp_path, poll_s=0.01)
