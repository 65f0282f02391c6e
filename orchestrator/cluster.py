"""Connect to the Ray cluster the user has, or start a private local one."""

from __future__ import annotations

import logging
import os
import tempfile

log = logging.getLogger("rightsweep")
LOCAL_POLL_S = 0.2


def connect() -> None:
    """``RAY_ADDRESS`` (set by ``ray job submit`` and by users) means a running cluster;
    otherwise a local Ray in its own temp dir, so it never touches another Ray on the machine."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        log.info("connected to the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        return
    temp_dir = tempfile.mkdtemp(prefix="rs-ray-")  # short: Ray's socket paths must stay under 107 chars
    # Ray Train's controller polls its workers every 2 s by default, and each report and the
    # end of a run wait for a poll: seconds of every short trial with workers (BENCHMARKS.md,
    # fixed per-trial overhead). The local Ray's processes inherit this environment.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(LOCAL_POLL_S))
    ray.init(include_dashboard=False, _temp_dir=temp_dir, configure_logging=False)
    log.info("started a local Ray (temp dir %s)", temp_dir)
