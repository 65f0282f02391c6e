"""Datasets in, padded batches out: loading, presets, templates, masking, collation.

Hub names and local files go through the same ``datasets.load_dataset`` call, so the
embedded default (written to jsonl) exercises the path real data takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from workers.config import DEFAULT_TEMPLATE, EMBEDDED, LOCAL_SUFFIXES, ConfigError, DatasetSpec

log = logging.getLogger("rightsweep.data")


def alpaca_prompt_text(instruction: str, input_text: str | None) -> str:
    """Alpaca's ``input`` is part of the prompt: instruction, blank line, input."""
    if input_text and input_text.strip():
        return f"{instruction}\n\n{input_text}"
    return instruction


def render_prompt(text: str, template: str = DEFAULT_TEMPLATE) -> str:
    # replace, not str.format: user text may hold braces.
    return template.replace("{prompt}", text)


def load_table(source: str, split: str):
    """A ``datasets.Dataset`` from a local json/jsonl/parquet file or a hub name."""
    import datasets

    suffix = Path(source).suffix
    if suffix in LOCAL_SUFFIXES:
        if "://" in source:  # a file behind a URL (https, s3 with fsspec): same loader
            return datasets.load_dataset(LOCAL_SUFFIXES[suffix], data_files=source, split="train")
        if not Path(source).is_file():
            raise FileNotFoundError(f"dataset file {source} does not exist")
        return datasets.load_dataset(LOCAL_SUFFIXES[suffix], data_files=source, split="train")
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as e:  # offline hub failures surface as many exception types
        raise RuntimeError(
            f"could not load dataset {source!r} (split {split!r}): {e}. A hub dataset needs network "
            "access; offline, give a local .json/.jsonl/.parquet path with the same columns."
        ) from e


@dataclass
class Counts:
    rows: int = 0
    truncated: int = 0
    dropped: int = 0

    def __str__(self) -> str:
        return f"{self.rows} rows, {self.truncated} truncated, {self.dropped} dropped (prompt alone >= max_len)"


def _encode(tokenizer, prompts: list[str], responses: list[list[str]], max_len: int):
    """Tokenize prompts and, per row, one or more responses (SFT: 1, pairs: 2).

    Prompt and response are tokenized apart so the prompt mask is exact; the response
    gets EOS and is cut from its end to fit ``max_len``. A row whose prompt leaves no room
    for a response token is dropped.
    """
    eos = tokenizer.eos_token_id
    p_ids = tokenizer(prompts)["input_ids"]
    r_ids = [tokenizer(list(col), add_special_tokens=False)["input_ids"] for col in zip(*responses)]
    out, truncated, dropped = [], 0, 0
    for i, p in enumerate(p_ids):
        room = max_len - len(p)
        if room < 1:
            dropped += 1
            out.append(None)
            continue
        seqs = []
        row_truncated = False
        for col in r_ids:
            r = col[i] + [eos]
            row_truncated |= len(r) > room
            r = r[:room]
            seqs.append((p + r, [0] * len(p) + [1] * len(r)))
        truncated += row_truncated
        out.append(seqs)
    return out, truncated, dropped


def _column_lists(table, cols: dict[str, str], source: str) -> dict[str, list]:
    """role -> that column as a Python list, read in one Arrow pass (iterating a ``datasets``
    table row by row, or a column of it, costs about 40 µs a row)."""
    _require_columns(table, cols, source)
    data = table.select_columns(sorted(set(cols.values()))).to_dict()
    return {role: data[name] for role, name in cols.items()}


def tokenize_sft(table, spec: DatasetSpec, tokenizer, max_len: int) -> tuple[Any, Counts]:
    col = _column_lists(table, spec.columns, spec.source)
    inputs = col.get("input", [None] * len(col["prompt"]))
    prompts = [render_prompt(alpaca_prompt_text(p, i), spec.template) for p, i in zip(col["prompt"], inputs)]
    responses = [[r] for r in col["response"]]
    encoded, truncated, dropped = _encode(tokenizer, prompts, responses, max_len)
    kept = [s[0] for s in encoded if s is not None]
    table = TokenTable({"input_ids": [ids for ids, _ in kept], "loss_mask": [m for _, m in kept]})
    return table, Counts(len(table), truncated, dropped)


def tokenize_pairs(table, spec: DatasetSpec, tokenizer, max_len: int) -> tuple[Any, Counts]:
    col = _column_lists(table, spec.columns, spec.source)
    prompts = [render_prompt(p, spec.template) for p in col["prompt"]]
    responses = list(zip(col["chosen"], col["rejected"]))
    encoded, truncated, dropped = _encode(tokenizer, prompts, responses, max_len)
    kept = [s for s in encoded if s is not None]
    table = TokenTable(
        {
            "chosen_ids": [c[0] for c, _ in kept],
            "chosen_mask": [c[1] for c, _ in kept],
            "rejected_ids": [r[0] for _, r in kept],
            "rejected_mask": [r[1] for _, r in kept],
        }
    )
    return table, Counts(len(table), truncated, dropped)


class TokenTable:
    """Tokenized rows, one column per field, each sequence a compact int32 array.

    ``table["col"]`` is a column, ``table[[i, j]]`` a dict of columns for those rows (what
    the collators take). Kept apart from ``datasets`` on purpose: its fingerprinting
    pickles whole tables on every transform, which costs time and floods worker logs.
    """

    def __init__(self, columns: dict[str, list]):
        self.columns = {
            k: [np.asarray(v, dtype=np.int32) if isinstance(v, list) else v for v in col] for k, col in columns.items()
        }
        lengths = {len(col) for col in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of unequal length: { {k: len(c) for k, c in self.columns.items()} }")
        self._len = lengths.pop() if lengths else 0

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.columns[key]
        return {k: [col[i] for i in key] for k, col in self.columns.items()}

    def with_column(self, name: str, values: list) -> "TokenTable":
        if len(values) != len(self):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(self)} rows")
        return TokenTable({**self.columns, name: list(values)})


def _require_columns(table, columns: dict[str, str], source: str) -> None:
    missing = sorted(set(columns.values()) - set(table.column_names))
    if missing:
        raise ValueError(f"dataset {source} has no column(s) {missing}; it has {table.column_names}")


def split_table(table, spec: DatasetSpec, seed: int, field: str = "data"):
    """(train, eval) raw tables: a named eval split, or ``eval_size`` held-out rows.
    ``field`` is the spec's place in the config, for the error."""
    if spec.eval_split is not None:
        train, held = table, load_table(spec.source, spec.eval_split)
        held = held.select(range(min(spec.eval_size, len(held))))
    else:
        if len(table) <= spec.eval_size:
            raise ConfigError(f"{field}.eval_size: {spec.source} has {len(table)} rows; holding out {spec.eval_size} "
                              "leaves none to train on (allowed: fewer than the rows)")
        parts = table.train_test_split(test_size=spec.eval_size, seed=seed, shuffle=True)
        train, held = parts["train"], parts["test"]
    if spec.max_rows is not None:
        train = train.select(range(min(spec.max_rows, len(train))))
    return train, held


def load_split_tokenized(spec: DatasetSpec, kind: str, tokenizer, max_len: int, seed: int, cache_dir: str):
    """Load, hold out, tokenize, and log what was truncated or dropped. Returns (train, eval)."""
    if spec.source == EMBEDDED:
        from workers.embedded import ensure_embedded

        spec = spec.model_copy(update={"source": str(ensure_embedded(cache_dir) / f"{kind}.jsonl")})
    table = load_table(spec.source, spec.split)
    train, held = split_table(table, spec, seed, f"trial.data.{kind}")
    tokenize = tokenize_sft if kind == "sft" else tokenize_pairs
    out = []
    for name, part in (("train", train), ("eval", held)):
        ds, counts = tokenize(part, spec, tokenizer, max_len)
        log.info("%s %s data from %s: %s", kind, name, spec.source, counts)
        if counts.rows == 0:
            raise ConfigError(f"trial.data.max_len: no {kind} {name} row of {spec.source} fits in max_len={max_len} "
                              f"({counts}); raise max_len or shorten the prompts")
        out.append(ds)
    return tuple(out)


def _padded(ids: list, masks: list, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded to the longest sequence: ids, where the real tokens are, and their loss
    mask. One vectorised fill per array instead of a tensor copy per row: at small model
    sizes a per-row loop was a measurable share of a training step."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    real = np.arange(lengths.max()) < lengths[:, None]
    input_ids = np.full(real.shape, pad_id, dtype=np.int64)
    input_ids[real] = np.concatenate(ids)
    loss_mask = np.zeros(real.shape, dtype=np.int64)
    loss_mask[real] = np.concatenate(masks)
    return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(real.astype(np.int64)),
            "loss_mask": torch.from_numpy(loss_mask)}


def collate_sft(rows: dict[str, list], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; ``attention_mask`` covers real tokens, ``loss_mask`` response tokens."""
    return _padded(rows["input_ids"], rows["loss_mask"], pad_id)


def collate_pairs(rows: dict[str, list], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows in one [2B, T] batch: one forward pass per pair batch."""
    batch = _padded(rows["chosen_ids"] + rows["rejected_ids"], rows["chosen_mask"] + rows["rejected_mask"], pad_id)
    if "ref_chosen" in rows:
        batch["ref_chosen"] = torch.tensor(rows["ref_chosen"], dtype=torch.float32)
        batch["ref_rejected"] = torch.tensor(rows["ref_rejected"], dtype=torch.float32)
    return batch


class BatchStream:
    """An endless, resumable stream of one rank's training batches.

    It advances only when ``next()`` is called (only when its objective is stepped),
    so ``peek()`` lets MAXRIGHT score the batch it would use without consuming it. Each
    epoch is a fresh permutation seeded by (seed, epoch), the same on every rank; rank r
    takes every world-th index of it, trimmed so all ranks have the same number of batches.
    """

    def __init__(self, dataset, batch_size: int, seed: int, collate: Callable, rank: int = 0, world_size: int = 1):
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.collate = collate
        self.rank = rank
        self.world_size = world_size
        per_rank = len(dataset) // world_size
        self.batches_per_epoch = per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"trial.train.batch_size: {len(dataset)} training rows cannot fill one batch of {batch_size} on each of "
                f"{world_size} worker(s) (allowed: at most {len(dataset) // world_size})"
            )
        self.epoch = 0
        self.position = 0
        self._order_epoch = -1
        self._order: np.ndarray | None = None
        self._peeked: tuple[tuple[int, int], dict] | None = None

    def _indices(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset))
            usable = self.batches_per_epoch * self.batch_size * self.world_size
            self._order = perm[:usable][self.rank :: self.world_size]
            self._order_epoch = self.epoch
        start = self.position * self.batch_size
        return self._order[start : start + self.batch_size]

    def peek(self) -> dict:
        key = (self.epoch, self.position)
        if self._peeked is None or self._peeked[0] != key:
            self._peeked = (key, self.collate(self.dataset[self._indices().tolist()]))
        return self._peeked[1]

    def next(self) -> dict:
        batch = self.peek()
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def eval_batches(dataset, batch_size: int, collate: Callable, rank: int = 0, world_size: int = 1):
    """This rank's share of a held-out set (every world-th row), in order, nothing dropped."""
    indices = list(range(rank, len(dataset), world_size))
    for start in range(0, len(indices), batch_size):
        yield collate(dataset[indices[start : start + batch_size]])
