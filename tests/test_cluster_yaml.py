"""cluster.yaml read as Ray's autoscaler reads it, and the pieces a working sweep on it needs:
boto3 on the head, one shared file system at the presets' storage path, a token the workers
get, a shared Hugging Face cache, several spot GPU types, and an MLflow server that outlives
a head restart."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from orchestrator.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    validate_config(config)
    return config


def shell(config, *sections) -> str:
    return "\n".join(c for s in sections for c in config[s])


def test_the_head_trains_nothing_and_gpu_workers_start_at_zero_on_several_spot_types(config):
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}, "trials never land on the head"
    gpu = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    instance_types = {t["node_config"]["InstanceType"] for t in gpu.values()}
    assert len(instance_types) >= 2, "several spot types, for when one has no spot capacity"
    for t in gpu.values():
        assert t["min_workers"] == 0 and t["max_workers"] >= 1
        assert t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    # The presets' memory check is made for these GPUs.
    for preset in ("pythia-1b", "llama3-8b-lora"):
        assert load_config(preset).resources.gpu_memory_gb <= 24


def test_boto3_is_installed_on_every_node(config):
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("boto3") for d in extras["cloud"])
    assert re.search(r"pip install -e '?\.\[cloud\]'?", shell(config, "setup_commands"))


def test_storage_is_one_shared_file_system_at_the_presets_path(config):
    setup = shell(config, "setup_commands")
    mount = re.search(r"mount -t nfs4 .*? (\S+\.efs\.[\w-]+\.amazonaws\.com):/ ([^\s)]+)", setup, re.S)
    assert mount, "every node mounts the EFS file system"
    shared = Path(mount.group(2))
    for preset in ("pythia-1b", "llama3-8b-lora"):
        storage = Path(load_config(preset).storage)
        assert shared in storage.parents, f"{preset}'s storage {storage} is on the shared mount {shared}"
        assert str(storage) in setup, "the set-up makes the storage folder, on the shared mount"
    assert setup.index("mount -t nfs4") < setup.index("mkdir -p /mnt/shared/rightsweep"), "made after mounting"


def test_the_token_is_generated_on_the_head_and_used_by_every_ray_process(config):
    assert "ray get-auth-token --generate" in shell(config, "head_setup_commands")
    assert "~/.ray/auth_token" in config["cluster_synced_files"], "the workers get the head's token"
    for section in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[section] if "ray start" in c)
        assert "RAY_AUTH_MODE=token" in start, section


def test_the_hugging_face_cache_is_shared_and_the_hub_token_stays_a_file(config):
    setup = shell(config, "setup_commands")
    for section in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[section] if "ray start" in c)
        cache = re.search(r"HF_HUB_CACHE=(\S+)", start)
        assert cache and cache.group(1).startswith("/mnt/shared/") and cache.group(1) in setup, section
        assert "HF_TOKEN" not in start, "a token in a start command would be in every process's environment dump"
    assert "~/.cache/huggingface/token" in config["cluster_synced_files"]


def test_mlflow_is_a_service_that_comes_back_with_the_head(config):
    setup = shell(config, "head_setup_commands")
    assert "nohup" not in setup
    assert "Restart=always" in setup and "systemctl enable --now mlflow" in setup
    assert "--host 127.0.0.1" in setup, "reached through an SSH tunnel, not open to the internet"
    head = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in head, "sweeps submitted as jobs log to that server"
