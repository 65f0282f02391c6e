"""A real ``mlflow server`` stopped mid-sweep: the sweep finishes, its trials stay in
Tune's results on storage, and ``rightsweep sync`` backfills MLflow once the server is
back, without duplicating what it already had. The sweep is handed secrets (in its
environment, a password in its tracking URI) and none of them reaches the server's store,
its artifacts, the storage or any output."""

import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from tests.support.mlflowserver import MlflowServer
from tests.support.planted import Planted
from tests.support.raycluster import free_ports
from tests.support.secrets import ENV_SECRETS, assert_no_secret, with_password

STEPS = [0, 50, 100, 150]


@pytest.fixture
def server(tmp_path):
    s = MlflowServer(tmp_path, free_ports(1)[0])
    s.start()
    yield s
    s.stop()


def trial_runs(client):
    exp = client.get_experiment_by_name("smoke")
    return client.search_runs([exp.experiment_id], filter_string="tags.`rightsweep.role` = 'trial'", max_results=100)


def rightsweep(*args, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")} | ENV_SECRETS
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_the_sweep_outlives_the_mlflow_server_and_sync_backfills_it(server, cache_dir, tmp_path):
    config = ["--config", "smoke", "--set", f"storage={tmp_path / 'storage'}",
              "--set", f"tracking.tracking_uri={with_password(server.uri)}"]
    outputs = {}
    sweep = rightsweep(
        "sweep", *config, "--set", f"trial.cache_dir={cache_dir}", "--set", "sweep.schedules=[mix]",
        "--set", "sweep.lams=[0.25, 0.75]", "--set", "sweep.max_concurrent_trials=1", "--set", "trial.train.total_steps=150",
        "--set", "trial.train.eval_every=50", "--set", "trial.train.checkpoint_every=50",
        "--set", "trial.train.f_star_sft=1.0", "--set", "trial.train.f_star_dpo=0.5",
    )
    client = MlflowClient(server.uri)
    deadline = time.time() + 300
    while time.time() < deadline and sweep.poll() is None:
        exp = client.get_experiment_by_name("smoke")
        if exp and any(r.info.status == "FINISHED" for r in trial_runs(client)):
            break
        time.sleep(0.5)  # each poll is work for the server on a 2-core machine
    server.stop(signal.SIGKILL)  # one trial is in MLflow; the rest of the sweep runs without it
    out, err = sweep.communicate(timeout=600)
    outputs["sweep"] = out + err
    assert sweep.returncode == 0, err[-4000:]
    assert "alice:***@" in out + err
    assert "MLflow unavailable" in err
    assert "run `rightsweep sync --experiment smoke`" in out
    assert len((tmp_path / "storage" / "smoke" / "report" / "pareto.csv").read_text().splitlines()) == 1 + 2

    server.start()  # same store, same port
    before = trial_runs(client)
    complete = [r for r in before if r.info.status == "FINISHED"
                and [m.step for m in client.get_metric_history(r.info.run_id, "eval/sft_loss")] == STEPS]
    assert len(complete) == 1, "the outage left MLflow behind (the second trial started as the server went)"

    # `sync` reads what trials left on shared storage: a pickle planted in Tune's state must not run.
    marker = tmp_path / "pwned"
    (tmp_path / "storage" / "smoke" / "tune" / "grid" / "tuner.pkl").write_bytes(pickle.dumps(Planted(marker)))
    sync = rightsweep("sync", *config, "--experiment", "smoke")
    out, err = sync.communicate(timeout=300)
    outputs["sync"] = out + err
    assert not marker.exists()
    assert sync.returncode == 0, err[-4000:]
    assert "MLflow has the 2 trial run(s) of sweep 'smoke'" in out
    runs = trial_runs(client)
    assert len(runs) == 2 and len({r.data.tags["rightsweep.trial_id"] for r in runs}) == 2
    assert {r.info.run_id for r in complete} <= {r.info.run_id for r in runs}, "runs already there were reused"
    for r in runs:
        assert r.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "eval/sft_loss")) == STEPS
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and "hypervolume/all" in parent.data.metrics
    assert parent.data.params["tracking.tracking_uri"] == f"http://alice:***@127.0.0.1:{server.port}"

    again = rightsweep("sync", *config, "--experiment", "smoke")
    out, err = again.communicate(timeout=300)
    outputs["second sync"] = out + err
    assert again.returncode == 0 and "0 missing point(s) copied" in out
    assert len(trial_runs(client)) == 2
    for r in runs:
        assert len(client.get_metric_history(r.info.run_id, "eval/sft_loss")) == len(STEPS)
    files = {p.name for p in tmp_path.rglob("*")}
    assert "config.yaml" in files and "mlflow.db" in files  # the server's store and artifacts are looked in
    assert_no_secret(outputs, [tmp_path])
