import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """One embedded build per test session, never the user's ~/.cache."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def embedded_root(cache_dir):
    from workers.embedded import ensure_embedded

    return ensure_embedded(cache_dir)


@pytest.fixture(scope="session")
def tokenizer(embedded_root):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_root / "base")


@pytest.fixture
def shared_fixture():
    def get(name: str) -> Path:
        path = SHARED_FIXTURES / name
        if not path.is_file():
            pytest.skip(f"real-data fixture {path} is absent (it lives in ../shared beside the clone)")
        return path

    return get


@pytest.fixture(scope="session")
def ray_local():
    """A private Ray instance for this test session: its own temp dir, stopped by us."""
    import ray

    from orchestrator.cluster import LOCAL_POLL_S

    temp_dir = tempfile.mkdtemp(prefix="rs-test-ray-")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(LOCAL_POLL_S))  # as rightsweep's own local Ray
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, configure_logging=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def pytest_configure(config):
    # Hugging Face libraries must never try the network in tests.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def head():
    """A ``ray start --head`` cluster of 2 CPUs per test module; a driver killed in a test is
    only its client, so no Ray process of the driver's own is left behind."""
    from tests.support.raycluster import Cluster

    cluster = Cluster()
    try:
        yield cluster.start_head(num_cpus=2)
    finally:
        cluster.stop()

