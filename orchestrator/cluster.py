"""Connect to the Ray cluster the user has, or start a private local one."""

from __future__ import annotations

import logging
import os
import tempfile

log = logging.getLogger("rightsweep")


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
    ray.init(include_dashboard=False, _temp_dir=temp_dir, configure_logging=False)
    log.info("started a local Ray (temp dir %s)", temp_dir)
