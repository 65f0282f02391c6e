"""Checks that need the filesystem but not Ray: run on the driver before any trial, so a
bad path or an unwritable storage fails in a second with the field's name."""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
from pathlib import Path

from orchestrator.config import ConfigError, ExperimentConfig
from workers.config import EMBEDDED, DatasetSpec, ModelSpec

HUB_TIMEOUT_S = 10
log = logging.getLogger("rightsweep")


def dataset_columns(path: Path) -> list[str] | None:
    """Column names of a local json / jsonl / parquet file; None when it holds no row. A
    jsonl file is parsed line by line, so a broken line deep in it is found here, by number."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        meta = pq.read_metadata(path)
        return list(meta.schema.names) if meta.num_rows else None
    with open(path) as f:
        if path.suffix == ".jsonl":
            first = None
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise ValueError(f"line {number} is not JSON ({e})") from None
                first = row if first is None else first
            return list(first) if first is not None else None
        data = json.load(f)
    rows = data if isinstance(data, list) else data.get("data", []) if isinstance(data, dict) else []
    return list(rows[0]) if rows else None


def check_dataset(field: str, spec: DatasetSpec) -> None:
    if spec.source == EMBEDDED or "://" in spec.source:
        return
    if not spec.is_local:
        check_hub_dataset(field, spec)
        return
    path = Path(spec.source)
    if not path.is_file():
        raise ConfigError(f"{field}.source: file {path} does not exist")
    try:
        have = dataset_columns(path)
    except (ValueError, OSError) as e:
        raise ConfigError(f"{field}.source: cannot read {path}: {e}") from None
    if have is None:
        raise ConfigError(f"{field}.source: {path} holds no rows")
    missing = sorted(set(spec.columns.values()) - set(have))
    if missing:
        raise ConfigError(f"{field}.columns: {path} has no column(s) {missing}; it has {have}")


def check_hub_dataset(field: str, spec: DatasetSpec) -> None:
    """A hub dataset must be reachable or in the local Hugging Face cache, as a hub model must:
    offline, the shared preparation would otherwise fail with a traceback after Ray started."""
    from huggingface_hub import constants, dataset_info
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        dataset_info(spec.source, timeout=HUB_TIMEOUT_S)
        return
    except RepositoryNotFoundError:
        raise ConfigError(f"{field}.source: {spec.source!r} is not a dataset on the hub (nor a local .json/.jsonl/.parquet)") from None
    except Exception as e:  # offline mode, DNS, refused or timed-out connections
        cached = Path(constants.HF_HUB_CACHE) / f"datasets--{spec.source.replace('/', '--')}"
        if not cached.is_dir():
            raise ConfigError(
                f"{field}.source: hub dataset {spec.source!r} is not in the Hugging Face cache and the hub cannot be reached "
                f"({type(e).__name__}): it needs network access to the hub, or a local .json/.jsonl/.parquet with the same columns"
            ) from None


def check_model(spec: ModelSpec) -> ModelSpec:
    """A hub name must be in the local Hugging Face cache or reachable on the hub: offline,
    a trial would otherwise fail only once its worker tries to download it. Returns the
    spec with a hub revision pinned to its commit, so every trial of a sweep loads the same
    weights and the reference cache is keyed by them (a branch name goes stale silently)."""
    name = spec.name
    if name == EMBEDDED:
        return spec
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ConfigError(f"trial.model.name: {local} is not a saved model (no config.json in it); give a folder "
                              "written by save_pretrained, a hub name, or 'embedded'")
        return spec
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ConfigError(f"trial.model.name: {name} does not exist (allowed: 'embedded', a hub name, or a local path)")
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        commit = model_info(name, revision=spec.revision, timeout=HUB_TIMEOUT_S).sha
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise ConfigError(f"trial.model.name: {name!r} (revision {spec.revision or 'main'}) is not on the hub: {type(e).__name__}") from None
    except Exception as e:  # offline mode, DNS, refused or timed-out connections: the local cache's copy
        cached = try_to_load_from_cache(name, "config.json", revision=spec.revision)
        if not isinstance(cached, str):
            raise ConfigError(
                f"trial.model.name: {name!r} is neither a local path nor in the Hugging Face cache, and the hub cannot be "
                f"reached ({type(e).__name__}): it needs network access to the hub, or a local path to a saved model"
            ) from None
        commit = Path(cached).parent.name  # <cache>/models--org--name/snapshots/<commit>/config.json
    if commit and commit != spec.revision:
        log.info("trial.model: %s revision %s is commit %s; the sweep uses that commit", name, spec.revision or "main", commit)
        spec = spec.model_copy(update={"revision": commit})
    return spec


def check_positions(cfg: ExperimentConfig) -> None:
    """A max_len beyond the model's position embeddings fails in the first forward pass, after
    Ray, the token cache and the reference pass; refused here instead."""
    from workers.estimate import model_config
    from workers.model import max_positions

    limit, max_len = max_positions(model_config(cfg.trial.model)), cfg.trial.data.max_len
    if limit is not None and max_len > limit:
        raise ConfigError(f"trial.data.max_len: {max_len} is longer than the {limit} positions of the model "
                          f"{cfg.trial.model.name!r}; allowed: at most {limit}")


def check_storage(storage: str) -> None:
    root = Path(storage)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-") as f:
            f.write(b"\0" * 65536)  # a full disk fails here, not an hour into training
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        what = "is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "is not writable"
        raise ConfigError(f"storage: {root} {what} ({e.strerror or e}); choose another folder with --set storage=PATH") from None


def check_memory(cfg: ExperimentConfig) -> None:
    """A trial whose memory estimate exceeds one GPU would run out of memory in its first
    step, after Ray, the shared inputs and the model load; checked only for GPU trials
    whose GPU memory is given (the estimate imports torch and transformers)."""
    r = cfg.resources
    if not r.use_gpu or r.gpu_memory_gb is None:
        return
    from workers.estimate import GB, estimate, largest_micro_batch

    workers, limit = max(r.num_workers, 1), r.gpu_memory_gb * GB
    e = estimate(cfg.trial, workers)
    if e.total <= limit:
        return
    t = cfg.trial.train
    largest = largest_micro_batch(cfg.trial, limit, workers)
    fix = (f"the largest micro_batch_size that fits is {largest}" if largest else
           "no micro_batch_size fits: turn on trial.train.gradient_checkpointing, use precision bf16-true or LoRA, or "
           "shorten trial.data.max_len")
    raise ConfigError(f"trial.train.micro_batch_size: {e.micro_batch} does not fit: a training process's memory estimate is "
                      f"{e.total / GB:.2f} GB (max_len {e.max_len}, precision {t.precision}, gradient checkpointing "
                      f"{'on' if t.gradient_checkpointing else 'off'}) and resources.gpu_memory_gb is {r.gpu_memory_gb:g} GB; "
                      f"{fix} (rightsweep estimate shows the breakdown)")


def preflight(cfg: ExperimentConfig) -> ExperimentConfig:
    """The checks, in a second; returns the config with the hub revision pinned."""
    model = check_model(cfg.trial.model)
    check_dataset("trial.data.sft", cfg.trial.data.sft)
    check_dataset("trial.data.pref", cfg.trial.data.pref)
    check_storage(cfg.storage)
    cfg = cfg.model_copy(update={"trial": cfg.trial.model_copy(update={"model": model})})
    check_positions(cfg)
    check_memory(cfg)
    return cfg
