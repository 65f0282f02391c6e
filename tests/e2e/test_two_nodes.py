"""Distributed for real: a two-node Ray cluster on this machine where only the second
node offers the resource the trials ask for."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.support.raycluster import Cluster

PY = sys.executable
# A gated model's Hugging Face token, set in the nodes' environment as cluster.yaml's start
# commands would: every trial process must see it, and no file of storage or MLflow hold it.
HF_TOKEN = "hf_rightsweepTestSecret0123456789"


@pytest.fixture(scope="module")
def two_nodes():
    cluster = Cluster()
    cluster.env["HF_TOKEN"] = HF_TOKEN
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_node(num_cpus=2, resources={"trainer": 2})
        yield cluster
    finally:
        cluster.stop()


def test_trials_run_on_the_node_with_the_resource(two_nodes, tmp_path):
    storage = tmp_path / "storage"
    two_nodes.trainer_sweep(storage, "twonode")

    # Ray's own record of where every trial process lived.
    code = """
import json, ray
from ray.util.state import list_actors
ray.init(address="auto", logging_level="ERROR")
trainer = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("trainer")]
actors = list_actors(detail=True, limit=10000)
# Tune runs each function trial as an ImplicitFunc actor; in local mode it also trains.
trials = [a.node_id for a in actors if a.class_name.endswith("ImplicitFunc")]

@ray.remote(resources={"trainer": 1})
def token():
    import os
    return os.environ.get("HF_TOKEN")
print(json.dumps({"trainer": trainer, "trials": trials, "nodes": len(ray.nodes()), "token": ray.get(token.remote())}))
"""
    # The driver is started without the token: what the trainer node's processes see came from its own environment.
    env = {k: v for k, v in two_nodes.env.items() if k != "HF_TOKEN"}
    out = subprocess.run([PY, "-c", code], env={**env, "RAY_ADDRESS": two_nodes.address}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    where = json.loads(out.stdout.strip().splitlines()[-1])
    assert where["nodes"] == 2 and len(where["trainer"]) == 1
    assert where["trials"], where  # one process per trial slot, kept for trial after trial (4 trials here)
    assert set(where["trials"]) == set(where["trainer"]), "every trial ran on the second node"
    assert where["token"] == HF_TOKEN, "the Hugging Face token reaches the trial processes' environment"
    holding = [str(p) for p in Path(storage).rglob("*") if p.is_file() and HF_TOKEN.encode() in p.read_bytes()]
    assert not holding, f"the Hugging Face token landed in {holding}"

    # Their results reached the sweep's storage and MLflow.
    report = json.loads((storage / "twonode" / "report" / "pareto.json").read_text())
    assert {r["schedule"] for r in report["rows"]} == {"alright", "maxright"}
    assert all((storage / "twonode" / "trials" / r["trial_id"] / "model" / "model.safetensors").is_file() for r in report["rows"])
    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    exp = client.get_experiment_by_name("twonode")
    children = client.search_runs([exp.experiment_id], filter_string="tags.`rightsweep.role` = 'trial'")
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
