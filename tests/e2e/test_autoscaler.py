"""A sweep on an autoscaling cluster: Ray's fake multi-node provider adds a node per
waiting trial up to the node type's ``max_workers`` (the head has no trainer resource), the
trials run side by side on those nodes, and the nodes go away once idle."""

import json
import sys
import time

import pytest

from tests.support.raycluster import Cluster

PY = sys.executable
TRAINER_NODE = {"resources": {"CPU": 1, "trainer": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2}


@pytest.fixture(scope="module")
def autoscaling():
    cluster = Cluster()
    try:
        yield cluster.start_autoscaling_head(head_cpus=1, worker_types={"trainer_node": TRAINER_NODE}, idle_timeout_minutes=0.1)
    finally:
        cluster.stop()


WHERE = """
import json, ray
from ray.util.state import list_actors
ray.init(address="auto", logging_level="ERROR")
head = [n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"]]
trials = [a.node_id for a in list_actors(detail=True, limit=10000) if a.class_name.endswith("ImplicitFunc")]
print("where", json.dumps({"head": head, "trials": trials}))
"""


def intervals(tune_dir) -> list[tuple[float, float]]:
    """(start, end) of each trial, from the last row of Tune's own result.json."""
    out = []
    for path in tune_dir.glob("*/*/result.json"):
        last = json.loads(path.read_text().strip().splitlines()[-1])
        out.append((last["timestamp"] - last["time_total_s"], last["timestamp"]))
    return out


def test_a_sweep_scales_out_to_added_nodes_and_back(autoscaling, tmp_path):
    assert autoscaling.node_count() == 1, "only the head before the sweep"
    storage = tmp_path / "storage"
    proc = autoscaling.trainer_sweep(storage, "scaled")
    # The whole grid is queued (2 anchors, then alright and maxright), not one trial at a time.
    assert "up to 4 of the 4 trials at once (every trial queued" in proc.stderr
    report = json.loads((storage / "scaled" / "report" / "pareto.json").read_text())
    assert {r["schedule"] for r in report["rows"]} == {"alright", "maxright"}

    out = autoscaling.run([PY, "-c", WHERE], timeout=120, env={"RAY_ADDRESS": autoscaling.address})
    assert out.returncode == 0, out.stderr[-2000:]
    # Autoscaler events reach this driver's stdout too, before or after the marked line.
    where = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("where "))[len("where "):])
    assert where["trials"] and not set(where["trials"]) & set(where["head"]), where
    assert len(set(where["trials"])) >= 2, "the trials ran on at least two nodes the autoscaler added"
    spans = intervals(storage / "scaled" / "tune")
    assert len(spans) == 4
    overlaps = [min(a[1], b[1]) - max(a[0], b[0]) for i, a in enumerate(spans) for b in spans[i + 1:]]
    assert max(overlaps) > 2, f"two trials ran at the same time: {spans}"

    # Idle nodes go back (idle_timeout_minutes: 0.1), leaving the head.
    deadline = time.time() + 180
    while autoscaling.node_count() > 1:
        assert time.time() < deadline, "the added nodes were not removed once idle"
        time.sleep(2)
