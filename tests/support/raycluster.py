"""A real Ray cluster on this machine for tests: ``ray start --head`` (and more nodes),
each in its own process group with its own temp dir, ports and auth token, stopped by
process-group id. Never ``ray stop``: that would end every Ray on the machine."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def worker_port_range(avoid: list[int], size: int = 100) -> tuple[int, int]:
    """A block of ports for Ray's worker processes, checked free at its ends and clear of
    the ports ``avoid`` (the node's own, picked just before)."""
    for _ in range(50):
        base = random.randrange(20000, 60000 - size)
        if any(base <= p < base + size for p in avoid):
            continue
        try:
            for port in (base, base + size // 2, base + size - 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base, base + size - 1
        except OSError:
            continue
    raise RuntimeError("no free worker port range")


class Cluster:
    def __init__(self):
        self.temp_dir = tempfile.mkdtemp(prefix="rs-ray-")  # short: socket paths < 107 chars
        token = uuid.uuid4().hex + uuid.uuid4().hex
        # A token of our own in the environment, so ~/.ray/auth_token is never touched.
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []
        self.gcs_port = self.dashboard_port = None
        self.logs: list[Path] = []

    def _node_ports(self, ports: list[int]) -> list[str]:
        nm, om, agent, agent_grpc, metrics, rte = ports
        lo, hi = worker_port_range(avoid=ports)
        return [f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--dashboard-agent-listen-port={agent}",
                f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
                f"--runtime-env-agent-port={rte}", f"--min-worker-port={lo}", f"--max-worker-port={hi}"]

    def _spawn(self, args: list[str]) -> None:
        log = Path(self.temp_dir) / f"node{len(self.procs)}.log"
        self.logs.append(log)
        self.procs.append(subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", *args],
                                           env=self.env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def start_head(self, num_cpus: int, resources: dict | None = None) -> "Cluster":
        # Every port from one call: ports freed between two calls can be handed out again.
        self.gcs_port, self.dashboard_port, client, *node = free_ports(9)
        self._spawn(["--head", f"--port={self.gcs_port}", f"--temp-dir={self.temp_dir}", f"--num-cpus={num_cpus}",
                     "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                     f"--ray-client-server-port={client}", f"--resources={json.dumps(resources or {})}",
                     *self._node_ports(node)])
        self.wait_for(lambda: self._takes_jobs(), "the head to take jobs", 180)
        return self

    def start_autoscaling_head(self, head_cpus: int, worker_types: dict, idle_timeout_minutes: float) -> "Cluster":
        """A head whose autoscaler adds and removes nodes through Ray's fake multi-node
        provider (the one Ray tests its autoscaler with): each "node" is a raylet on this
        machine. ``ray.cluster_utils.AutoscalingCluster`` would start it, but it runs
        ``ray stop --force`` first (every Ray on the machine) and its config template is not
        in Ray's wheel, so the same config is written here."""
        self.gcs_port, self.dashboard_port, client, *node = free_ports(9)
        config = {
            "cluster_name": f"fake-{uuid.uuid4().hex[:8]}", "max_workers": sum(t["max_workers"] for t in worker_types.values()),
            # The nodes join this head, not Ray's default port 6379.
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": self.address},
            "available_node_types": {"ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
                                     **worker_types},
            "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
            "idle_timeout_minutes": idle_timeout_minutes, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
            **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                               "head_start_ray_commands", "worker_start_ray_commands")},
        }
        path = Path(self.temp_dir) / "autoscaling.json"
        path.write_text(json.dumps(config))
        self.env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
        self._spawn(["--head", f"--port={self.gcs_port}", f"--temp-dir={self.temp_dir}", f"--num-cpus={head_cpus}",
                     f"--autoscaling-config={path}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={client}", *self._node_ports(node)])
        self.wait_for(lambda: self.node_count() >= 1, "the head", 180)
        return self

    def add_node(self, num_cpus: int, resources: dict) -> None:
        before = self.node_count()
        self._spawn([f"--address=127.0.0.1:{self.gcs_port}", f"--num-cpus={num_cpus}",
                     f"--resources={json.dumps(resources)}", *self._node_ports(free_ports(6))])
        self.wait_for(lambda: self.node_count() > before, "the new node to join", 120)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def run(self, args: list[str], timeout: float = 900, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(args, env={**self.env, **kw.pop("env", {})}, capture_output=True, text=True, timeout=timeout, **kw)

    def trainer_sweep(self, storage: Path, name: str) -> subprocess.CompletedProcess:
        """The smoke sweep's anchors, ALRIGHT and MAXRIGHT trials (4), each asking for one
        ``trainer`` resource, driven from here; it must succeed."""
        proc = self.run([sys.executable, "-m", "orchestrator", "sweep", "--config", "smoke", "--set", f"storage={storage}",
                         "--set", f"name={name}", "--set", "resources.custom={trainer: 1}",
                         "--set", "sweep.schedules=[alright, maxright]"], timeout=900, env={"RAY_ADDRESS": self.address})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    def _takes_jobs(self) -> bool:
        """A job runs to its end: the dashboard is up *and* the head's job agent has
        registered (on a loaded machine that takes more than the 10 s Ray's job API waits
        for it, and a submission before then fails with "No available agent")."""
        try:
            return self.run([RAY, "job", "submit", "--address", self.dashboard, "--", "true"], timeout=120).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def node_count(self) -> int:
        # Marked: an autoscaler's events ("Removing 1 nodes ...") reach this driver's stdout too.
        code = "import ray; ray.init(address='auto', logging_level='ERROR'); print('alive', sum(n['Alive'] for n in ray.nodes()))"
        out = self.run([sys.executable, "-c", code], timeout=120, env={"RAY_ADDRESS": self.address})
        counts = [int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("alive ")]
        return counts[-1] if out.returncode == 0 and counts else 0

    def wait_for(self, ready, what: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a ray start process exited while waiting for {what}: {self.tail()}")
            if ready():
                return
            time.sleep(1)
        raise TimeoutError(f"timed out waiting for {what}: {self.tail()}")

    def tail(self) -> str:
        return "\n".join(log.read_text()[-2000:] for log in self.logs if log.exists())

    def stop(self) -> None:
        """SIGTERM each ``ray start --block`` process group we started, then SIGKILL what is left."""
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        # One short deadline for all: a `ray start --block` often outlives SIGTERM by far more
        # (it waited the full 30 s in four tests' teardowns), and its whole group is killed next.
        deadline = time.monotonic() + 3
        for p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
