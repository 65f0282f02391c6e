"""Connect to the Ray cluster the user has, or start a private local one."""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import shutil
import tempfile

from orchestrator.config import ConfigError, Resources

log = logging.getLogger("rightsweep")
LOCAL_POLL_S = 0.2
_started_locally = False


def will_start_locally() -> bool:
    """Whether ``connect`` would start a private local Ray (no cluster to join)."""
    import ray

    return not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")


def connect() -> None:
    """``RAY_ADDRESS`` (set by ``ray job submit`` and by users) means a running cluster;
    otherwise a private local Ray: its own temp dir (it never touches another Ray on the
    machine), its servers on 127.0.0.1 only, and a token of its own."""
    global _started_locally
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        log.info("connected to the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        return
    temp_dir = tempfile.mkdtemp(prefix="rs-ray-")  # short: Ray's socket paths must stay under 107 chars
    # Ray's single-machine mode (its default on macOS and Windows): the node address is
    # 127.0.0.1, so every server Ray starts binds there, not on all interfaces. The variable
    # reaches Ray's processes; the constant is this process's copy, read when Ray starts.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
    # Token authentication stays on (Ray's default); a token in this process tree's
    # environment, so Ray does not write one to ~/.ray/auth_token for a throwaway cluster.
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    # Ray Train's controller polls its workers every 2 s by default, and each report and the
    # end of a run wait for a poll: seconds of every short trial with workers (BENCHMARKS.md,
    # fixed per-trial overhead). The local Ray's processes inherit this environment.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(LOCAL_POLL_S))
    ray.init(include_dashboard=False, _temp_dir=temp_dir, configure_logging=False)
    _started_locally = True
    # Ray makes its folders (sessions, logs, sockets) world-writable; an owner-only top folder
    # keeps every other user out of all of them. Ours alone, it goes when this Ray stops.
    for root, dirs, _ in os.walk(temp_dir):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o700)
    os.chmod(temp_dir, 0o700)
    atexit.register(_stop_local, temp_dir)
    log.info("started a local Ray (temp dir %s)", temp_dir)


def disconnect() -> None:
    """Leave Ray once the trials have ended, so the log lines its processes still had in
    flight (and Ray's held-back repeats) print before the sweep's summary, not after it at
    exit. A private local Ray stops with it; its temp dir goes at exit."""
    import ray

    ray.shutdown()


def _stop_local(temp_dir: str) -> None:
    """At exit: stop the private Ray (before Ray's own exit hook) and remove its temp dir."""
    import ray

    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def may_add_nodes() -> bool:
    """Whether an autoscaler may bring nodes this cluster does not have yet. Ray has no API
    for it: the v1 autoscaler's status names node types by id on a fixed cluster
    (``node_<id>``) and by config on an autoscaling one; no status (or the v2 autoscaler,
    which writes none) counts as "may"."""
    if _started_locally:
        return False
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get("__autoscaling_status")
    if not raw:
        return True
    mapping = json.loads(raw).get("autoscaler_report", {}).get("node_type_mapping", {})
    return not mapping or any(v != f"node_{k}" for k, v in mapping.items())


def check_fits(resources: Resources) -> None:
    """A trial this cluster can never place would wait in PENDING for ever: refuse it with
    the field to change, unless an autoscaler may add the nodes it needs."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    need = resources.per_process()
    n = max(resources.num_workers, 1)
    room = sum(min(int(node.get(k, 0) // v) for k, v in need.items()) for node in nodes)
    if room >= n:
        return
    missing = [k for k, v in need.items() if not any(node.get(k, 0) >= v for node in nodes)]
    if missing:
        k = missing[0]
        largest = max((node.get(k, 0) for node in nodes), default=0)
        field = {"CPU": "resources.cpus_per_worker", "GPU": "resources.gpus_per_worker" if largest else "resources.use_gpu"}
        problem = (f"{field.get(k, f'resources.custom.{k}')}: a training process needs {need[k]:g} {k} and no node "
                   f"has that many (the largest has {largest:g})")
    else:
        problem = (f"resources.num_workers: {n} workers of {need} each do not fit; this cluster has room for {room} "
                   f"(allowed: at most {room})")
    if may_add_nodes():
        log.warning("%s; the trials wait until the autoscaler adds nodes", problem)
        return
    raise ConfigError(problem)


def fit_count(have: dict[str, float], need: dict[str, float]) -> int:
    """How many bundles of ``need`` the resources ``have`` hold (each resource counted alone,
    as Tune's placement is per trial)."""
    return min((int(have.get(k, 0) // v) for k, v in need.items() if v > 0), default=0)


def trial_slots(need: dict[str, float], n_trials: int) -> tuple[int, str]:
    """How many trials of ``need`` each may run at once, and why. A fixed cluster: what its
    resources fit now (at least one). An autoscaling one: what its node types fit at their
    ``max_workers`` when Ray publishes that (autoscaler v2), else every trial of the grid:
    a trial waiting for resources is the demand the autoscaler adds nodes for, and the
    autoscaler itself caps the nodes at ``max_workers``."""
    import ray

    if may_add_nodes():
        most = ray._private.state.state.get_max_resources_from_cluster_config()
        if most:
            return max(1, min(fit_count(most, need), n_trials)), "what the autoscaler's node types fit at max_workers"
        return n_trials, "every trial queued: the autoscaler adds nodes for those waiting"
    return max(1, min(fit_count(ray.cluster_resources(), need), n_trials)), "what the cluster's resources fit"

