"""Checks that need the filesystem but not Ray: run on the driver before any trial, so a
bad path or an unwritable storage fails in a second with the field's name."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from orchestrator.config import ConfigError, ExperimentConfig
from workers.config import DatasetSpec


def dataset_columns(path: Path) -> list[str]:
    """Column names of a local json / jsonl / parquet file, reading as little as it can."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with open(path) as f:
        if path.suffix == ".jsonl":
            first = f.readline()
            if not first.strip():
                raise ConfigError(f"{path} is empty")
            return list(json.loads(first))
        data = json.load(f)
    rows = data if isinstance(data, list) else data.get("data", []) if isinstance(data, dict) else []
    if not rows:
        raise ConfigError(f"{path} holds no rows")
    return list(rows[0])


def check_dataset(field: str, spec: DatasetSpec) -> None:
    if not spec.is_local:
        return
    path = Path(spec.source)
    if not path.is_file():
        raise ConfigError(f"{field}.source: file {path} does not exist")
    try:
        have = dataset_columns(path)
    except (ValueError, OSError) as e:
        raise ConfigError(f"{field}.source: cannot read {path}: {e}") from None
    missing = sorted(set(spec.columns.values()) - set(have))
    if missing:
        raise ConfigError(f"{field}.columns: {path} has no column(s) {missing}; it has {have}")


def check_storage(storage: str) -> None:
    root = Path(storage)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-") as f:
            f.write(b"\0" * 65536)  # a full disk fails here, not an hour into training
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ConfigError(f"storage: {root} is not writable ({e.strerror or e})") from None


def preflight(cfg: ExperimentConfig) -> None:
    check_dataset("trial.data.sft", cfg.trial.data.sft)
    check_dataset("trial.data.pref", cfg.trial.data.pref)
    check_storage(cfg.storage)
