"""MLflow for tests: a real ``mlflow server`` on loopback, in its own process group so it
can be stopped (or killed) with everything it started; a client of a sweep's SQLite store."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

from mlflow import MlflowClient


def store(storage) -> MlflowClient:
    """The default store of a sweep whose ``storage`` is given."""
    return MlflowClient(f"sqlite:///{storage}/mlflow.db")


class MlflowServer:
    def __init__(self, root, port):
        self.root, self.port, self.proc = root, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self):
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
               "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1"]  # its default 4 take half a minute to start on a loaded 2-core machine
        self.proc = subprocess.Popen(cmd, cwd=self.root, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not come up")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)  # its own process group: the server and its workers
            self.proc.wait(timeout=60)
