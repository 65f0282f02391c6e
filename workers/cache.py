"""Files on a storage that many processes share: written whole or not at all, and checked
against the content hash stored in them before anyone trusts them.

The token tables and the reference log-probs are both such files (safetensors: flat
arrays, no pickle); a file of another run, a truncated copy or a tampered one is reported
and recomputed, never fed to a trial.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

log = logging.getLogger("rightsweep.cache")


def content_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 of the arrays' bytes, in the order of their names."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def write_checked(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """``arrays`` with their content hash, through a temporary file and ``os.replace``: a
    concurrent reader sees all of the file or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata={**metadata, "sha256": content_digest(arrays)})
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_checked(path: Path, what: str) -> tuple[dict[str, np.ndarray], dict[str, str]] | None:
    """(arrays, metadata) of a file whose content matches the hash stored with it; None,
    with a warning naming ``what`` it is, for a file that is unreadable or does not match.
    Checks of the content's shape are the caller's."""
    try:
        with safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # unreadable, truncated, not safetensors
        log.warning("%s %s is unreadable (%s); recomputing it", what, path, e)
        return None
    if meta.get("sha256") != content_digest(arrays):
        log.warning("%s %s does not match the content hash stored with it; recomputing it", what, path)
        return None
    return arrays, meta


def files_digest(paths: list[Path]) -> str:
    """sha256 of the files' bytes, in order; once per process while they are unchanged."""
    return _hash_files(tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths))


@functools.lru_cache(maxsize=16)
def _hash_files(files: tuple[tuple[str, int, int], ...]) -> str:
    """Paths, mtimes and sizes are the key: a large model's weights or a hub-scale dataset
    file take seconds to read."""
    h = hashlib.sha256()
    for name, _, _ in files:
        with open(name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()
