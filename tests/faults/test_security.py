"""Security defaults: servers on loopback, no remote code unless asked, checkpoints that
cannot run code, weights as safetensors."""

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

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
    from workers.loop import load_progress

    marker = tmp_path / "pickle-ran"
    torch.save({"state": Payload(str(marker))}, tmp_path / "optimizer.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_progress(str(tmp_path), SimpleNamespace(optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)))
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
