"""Security defaults: servers on loopback, no remote code unless asked, checkpoints that
cannot run code, weights as safetensors. (No secret reaching MLflow, storage or logs: the
MLflow outage test, whose sweep is handed some.)"""

import json
import os
import pickle
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from orchestrator.config import load_config
from workers.config import ModelSpec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on ``port`` (IPv4), from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if state == "0A" and int(p, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


def test_mlflow_ui_binds_loopback_by_default(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", "--config", "smoke", "--set", f"storage={tmp_path}",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not listening_addresses(port) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the UI and the server it started, nothing else
        proc.wait(timeout=30)


PRIVATE_RAY = """
import json, os, sys, psutil, ray
from orchestrator.cluster import connect
connect()
me = psutil.Process()
listen = {c.laddr.ip for p in [me, *me.children(recursive=True)] for c in p.net_connections("tcp") if c.status == "LISTEN"}
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "listen": sorted(listen), "token": os.environ["RAY_AUTH_TOKEN"]}), flush=True)
sys.stdin.read()  # up until the test is done with it
"""
CLIENT = "import ray; ray.init(address={gcs!r}); print('connected', flush=True)"


def test_the_private_local_ray_listens_on_loopback_and_wants_its_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_ENABLE"))}
    ray_proc = subprocess.Popen([sys.executable, "-c", PRIVATE_RAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
    try:
        private = json.loads(ray_proc.stdout.readline())
        assert private["listen"] and set(private["listen"]) <= {"127.0.0.1", "::ffff:127.0.0.1"}
        # Two clients on this machine (Ray's loopback mode on their side too): one with a
        # wrong token (and a home with none), one with the right one.
        client_env = {**env, "HOME": str(tmp_path), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
        script = CLIENT.format(gcs=private["gcs"])
        stranger = subprocess.Popen([sys.executable, "-c", script], env={**client_env, "RAY_AUTH_TOKEN": "0" * 64}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        friend = subprocess.Popen([sys.executable, "-c", script], env={**client_env, "RAY_AUTH_TOKEN": private["token"]},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        fout, ferr = friend.communicate(timeout=120)
        assert "connected" in fout, ferr[-3000:]
        out, err = stranger.communicate(timeout=120)
        assert stranger.returncode != 0 and "connected" not in out and "Authentication token is missing or incorrect" in err
    finally:
        os.killpg(ray_proc.pid, signal.SIGTERM)  # the driver and the Ray it started, nothing else
        ray_proc.wait(timeout=60)


def test_model_code_shipped_with_a_checkpoint_is_not_run_unless_asked(embedded_root, cache_dir, tmp_path):
    from workers.model import load_policy

    repo = tmp_path / "repo"
    shutil.copytree(embedded_root / "base", repo)
    marker = tmp_path / "remote-code-ran"
    (repo / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((repo / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.Config", "AutoModelForCausalLM": "evil.Model"}
    (repo / "config.json").write_text(json.dumps(config))

    assert ModelSpec().trust_remote_code is False
    model = load_policy(ModelSpec(name=str(repo)), cache_dir, torch.device("cpu"))
    assert type(model).__name__ == "GPTNeoXForCausalLM" and not marker.exists()

    # The same folder with trust_remote_code on does import the shipped code: the test above is not vacuous.
    with pytest.raises(Exception):
        load_policy(ModelSpec(name=str(repo), trust_remote_code=True), cache_dir, torch.device("cpu"))
    assert marker.exists()


class Payload:
    """Unpickling this writes a file: what a tampered checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


def test_a_tampered_checkpoint_cannot_run_code(tmp_path):
    from workers.checkpoint import load_checkpoint

    marker = tmp_path / "pickle-ran"
    torch.save({"state": Payload(str(marker))}, tmp_path / "optimizer.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), schedule=None, streams={})
    assert not marker.exists()
    torch.load(tmp_path / "optimizer.pt", weights_only=False)  # what an unsafe loader would do
    assert marker.exists()


def test_weights_are_saved_as_safetensors(cache_dir, tmp_path):
    from workers.loop import fit
    from workers.session import LocalSession

    cfg = load_config("smoke", [f"trial.cache_dir={cache_dir}"]).trial
    cfg = cfg.model_copy(update={"output_dir": str(tmp_path / "out"),
                                 "train": cfg.train.model_copy(update={"total_steps": 2, "eval_every": 2})})
    session = LocalSession(checkpoint_root=str(tmp_path / "ckpt"))
    fit(cfg, session)
    for folder in (tmp_path / "out" / "model", Path(session.checkpoints[-1]) / "model"):
        names = {p.name for p in folder.iterdir()}
        assert "model.safetensors" in names and not any(n.endswith((".bin", ".pt", ".pkl")) for n in names), names


def test_the_private_rays_temp_dir_is_owner_only_and_removed_at_exit(cache_dir, tmp_path):
    """Ray left its temp dir and its session, logs and sockets folders 0777, and never
    removed them: 23 were found in the system temp folder."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="rst-", dir="/tmp"))  # short: Ray's socket paths must stay under 107 chars
    log = tmp_path / "train.log"
    cmd = [sys.executable, "-m", "orchestrator", "train", "--config", "smoke", "--set", f"storage={tmp_path / 's'}",
           "--set", f"trial.cache_dir={cache_dir}", "--set", "trial.train.total_steps=200", "--set", "trial.train.eval_every=100"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": str(tmp)})
        deadline = time.time() + 300
        while "started a local Ray" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        (ray_dir,) = tmp.glob("rs-ray-*")
        assert stat.S_IMODE(ray_dir.stat().st_mode) == 0o700
        sessions = list(ray_dir.glob("session_2*"))
        assert sessions and all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in sessions)
        assert proc.wait(timeout=600) == 0, log.read_text()[-2000:]
    left = list(tmp.glob("rs-ray-*"))
    shutil.rmtree(tmp, ignore_errors=True)
    assert not left, "the private Ray's temp dir is removed when it stops"
