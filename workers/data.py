"""Datasets in, padded batches out: loading, presets, templates, masking, collation.

Hub names and local files go through the same ``datasets.load_dataset`` call, so the
embedded default (written to jsonl) exercises the path real data takes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from workers.cache import files_digest, read_checked, write_checked
from workers.config import EMBEDDED, LOCAL_SUFFIXES, ConfigError, DataSpec, DatasetSpec
from workers.embedded import ensure_embedded
from workers.progress import progress_bar
from workers.prompts import alpaca_prompt_text, render_prompt

log = logging.getLogger("rightsweep.data")


def load_table(source: str, split: str):
    """A ``datasets.Dataset`` from a local json/jsonl/parquet file or a hub name."""
    import datasets

    suffix = Path(source).suffix
    if suffix in LOCAL_SUFFIXES:
        if "://" not in source:  # else a file behind a URL (https, s3 with fsspec): same loader
            _existing(source)
        return datasets.load_dataset(LOCAL_SUFFIXES[suffix], data_files=source, split="train")
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as e:  # offline hub failures surface as many exception types
        raise RuntimeError(
            f"could not load dataset {source!r} (split {split!r}): {e}. A hub dataset needs network "
            "access; offline, give a local .json/.jsonl/.parquet path with the same columns."
        ) from e


def _existing(source: str) -> Path:
    if not Path(source).is_file():
        raise FileNotFoundError(f"dataset file {source} does not exist")
    return Path(source)


class Ragged:
    """A column of variable-length sequences as one flat array and the offsets of its rows:
    row ``i`` is ``values[offsets[i]:offsets[i + 1]]``, a view. A Python list of one small
    array per row cost about 100 bytes of object overhead a row and a copy to store; this
    is what the token cache holds, and it is read back as it is."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(values) \
                or np.any(np.diff(offsets) < 0):
            raise ValueError(f"offsets do not index {len(values)} values")
        self.values, self.offsets = values, offsets

    @classmethod
    def from_sequences(cls, seqs, dtype=np.int32) -> "Ragged":
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        values = np.concatenate([np.asarray(s, dtype=dtype) for s in seqs]) if len(seqs) else np.zeros(0, dtype)
        return cls(values.astype(dtype, copy=False), np.concatenate([[0], np.cumsum(lengths)]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                raise ValueError("a Ragged column slices contiguously")
            stop = max(start, stop)
            return Ragged(self.values[self.offsets[start] : self.offsets[stop]], self.offsets[start : stop + 1] - self.offsets[start])
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class TokenTable:
    """Tokenized rows, one column per field: sequences as ``Ragged`` columns (int32 ids,
    int8 masks), scalars (the reference log-probs) as lists.

    ``table["col"]`` is a column, ``table[[i, j]]`` a dict of columns for those rows (what
    the collators take). Kept apart from ``datasets`` on purpose: its fingerprinting
    pickles whole tables on every transform, which costs time and floods worker logs.
    """

    def __init__(self, columns: dict[str, list | Ragged]):
        self.columns = {k: col if isinstance(col, Ragged) or _scalars(col) else Ragged.from_sequences(col)
                        for k, col in columns.items()}
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

    def rows(self, start: int, stop: int) -> "TokenTable":
        """Rows ``start`` to ``stop`` (views, no copy)."""
        return TokenTable({k: col[start:stop] for k, col in self.columns.items()})

    def with_column(self, name: str, values: list) -> "TokenTable":
        if len(values) != len(self):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(self)} rows")
        return TokenTable({**self.columns, name: list(values)})


def _scalars(col) -> bool:
    return len(col) > 0 and not isinstance(col[0], (list, tuple, np.ndarray))


def _require_columns(table, columns: dict[str, str], source: str) -> None:
    missing = sorted(set(columns.values()) - set(table.column_names))
    if missing:
        raise ValueError(f"dataset {source} has no column(s) {missing}; it has {table.column_names}")


@dataclass
class Rows:
    """A dataset's rows in our roles: the rendered prompt and its response(s) — one for SFT,
    (chosen, rejected) for preference pairs."""

    prompts: list[str]
    responses: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, indices) -> "Rows":
        return Rows([self.prompts[i] for i in indices], [self.responses[i] for i in indices])


def read_rows(table, spec: DatasetSpec, kind: str) -> Rows:
    """The mapped columns of a ``datasets`` table as ``Rows``, prompts rendered with the template."""
    col = _column_lists(table, spec.columns, spec.source)
    if kind == "sft":
        inputs = col.get("input", [None] * len(col["prompt"]))
        prompts = [render_prompt(alpaca_prompt_text(p, i), spec.template) for p, i in zip(col["prompt"], inputs)]
        return Rows(prompts, [(r,) for r in col["response"]])
    return Rows([render_prompt(p, spec.template) for p in col["prompt"]], list(zip(col["chosen"], col["rejected"])))


@dataclass
class SplitCounts:
    rows: int = 0
    duplicates: int = 0  # exact copies of an earlier row, dropped
    shared_prompt: int = 0  # rows whose prompt has other rows too (kept on one side of the split)
    held_prompts: int = 0
    unused: int = 0  # rows of a held-out prompt beyond eval_size: neither trained nor scored on
    excluded: int = 0  # training rows dropped: their prompt is held out (eval split, or the other dataset)

    def __str__(self) -> str:
        return (f"{self.rows} rows, {self.duplicates} exact duplicates dropped, {self.shared_prompt} rows share their "
                f"prompt with another row (each prompt on one side of the split), {self.held_prompts} prompts held out, "
                f"{self.unused} rows of held-out prompts unused, {self.excluded} training rows dropped because their "
                "prompt is held out (in the eval split or the other dataset)")


def dedupe(rows: Rows) -> tuple[Rows, int]:
    """Exact duplicate rows dropped (the first kept); returns the rows and how many went."""
    seen, keep = set(), []
    for i, row in enumerate(zip(rows.prompts, rows.responses)):
        if row not in seen:
            seen.add(row)
            keep.append(i)
    return rows.take(keep), len(rows) - len(keep)


def split_by_prompt(rows: Rows, spec: DatasetSpec, seed: int, field: str) -> tuple[Rows, Rows, SplitCounts]:
    """(train, held-out): whole prompts are held out, in a seeded order, until their rows
    reach ``spec.held_out``; no held-out prompt has a training row. Splitting by row index
    instead let copies of a training row into the held-out set."""
    counts = SplitCounts(rows=len(rows))
    rows, counts.duplicates = dedupe(rows)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(rows.prompts):
        groups.setdefault(p, []).append(i)
    eval_size = spec.held_out(len(groups))
    counts.shared_prompt = sum(len(g) for g in groups.values() if len(g) > 1)
    prompts = list(groups)
    held, held_prompts = [], set()
    for j in np.random.default_rng(seed).permutation(len(prompts)):
        if len(held) >= eval_size:
            break
        held_prompts.add(prompts[j])
        held.extend(groups[prompts[j]][: eval_size - len(held)])
    if len(held_prompts) == len(prompts):
        raise ConfigError(f"{field}.eval_size: the data has {len(prompts)} distinct prompts ({len(rows)} rows); holding out "
                          f"{eval_size} rows leaves none to train on (allowed: fewer rows than those prompts hold)")
    counts.held_prompts = len(held_prompts)
    counts.unused = sum(len(groups[p]) for p in held_prompts) - len(held)
    train = [i for i, p in enumerate(rows.prompts) if p not in held_prompts]
    return rows.take(train), rows.take(held), counts


@dataclass
class Split:
    """One dataset's training and held-out rows, and how they came to be."""

    kind: str
    source: str
    train: Rows
    held: Rows
    counts: SplitCounts

    def without_training_prompts(self, prompts: set[str]) -> "Split":
        keep = [i for i, p in enumerate(self.train.prompts) if p not in prompts]
        self.counts.excluded += len(self.train) - len(keep)
        return Split(self.kind, self.source, self.train.take(keep), self.held, self.counts)


def _with_embedded_file(spec: DatasetSpec, kind: str, cache_dir: str) -> DatasetSpec:
    if spec.source != EMBEDDED:
        return spec
    return spec.model_copy(update={"source": str(ensure_embedded(cache_dir) / f"{kind}.jsonl")})


def load_split(spec: DatasetSpec, kind: str, seed: int, cache_dir: str) -> Split:
    """Load a dataset and hold out by prompt: a named ``eval_split``, or ``eval_size`` rows
    of whole prompts of the training split. Either way no held-out prompt is trained on."""
    spec = _with_embedded_file(spec, kind, cache_dir)
    field = f"trial.data.{kind}"
    rows = read_rows(load_table(spec.source, spec.split), spec, kind)
    if spec.eval_split is not None:
        held, held_duplicates = dedupe(read_rows(load_table(spec.source, spec.eval_split), spec, kind))
        held = held.take(range(min(spec.held_out(len(set(held.prompts))), len(held))))
        train, duplicates = dedupe(rows)
        counts = SplitCounts(rows=len(rows), duplicates=duplicates + held_duplicates, held_prompts=len(set(held.prompts)))
        split = Split(kind, spec.source, train, held, counts).without_training_prompts(set(held.prompts))
        train = split.train
    else:
        train, held, counts = split_by_prompt(rows, spec, seed, field)
    if spec.max_rows is not None:
        train = train.take(range(min(spec.max_rows, len(train))))
    return Split(kind, spec.source, train, held, counts)


TABLES = ("sft_train", "sft_eval", "pref_train", "pref_eval")
SEQUENCES = {"sft": (("input_ids", "loss_mask"),), "pref": (("chosen_ids", "chosen_mask"), ("rejected_ids", "rejected_mask"))}
TOKENS_FORMAT = 1  # part of the token cache's key: bump it when the split or tokenize change what they produce


def load_tokenized(data: DataSpec, tokenizer, cache_dir: str):
    """Both datasets held out by prompt — a prompt held out in one is not trained on in the
    other either (the embedded SFT and preference data share prompts) — tokenized, with
    what was dropped logged. Returns (sft_train, sft_eval, pref_train, pref_eval)."""
    return _tokenized(data, tokenizer, cache_dir)[0]


def load_splits(data: DataSpec, cache_dir: str) -> tuple[Split, Split]:
    """Both datasets held out by prompt, each training set without the other's held-out prompts."""
    sft = load_split(data.sft, "sft", data.seed, cache_dir)
    pref = load_split(data.pref, "pref", data.seed, cache_dir)
    return sft.without_training_prompts(set(pref.held.prompts)), pref.without_training_prompts(set(sft.held.prompts))


def require_rows(kind: str, name: str, source: str, counts: "Counts", max_len: int) -> None:
    if counts.rows == 0:
        raise ConfigError(f"trial.data.max_len: no {kind} {name} row of {source} fits in "
                          f"max_len={max_len} ({counts}); raise max_len or shorten the prompts")


def _tokenized(data: DataSpec, tokenizer, cache_dir: str) -> tuple[tuple[TokenTable, ...], list[str]]:
    """``load_tokenized``'s tables and the lines it logged (the token cache keeps them)."""
    out, notes = [], []

    def note(line: str) -> None:
        log.info("%s", line)
        notes.append(line)

    for split in load_splits(data, cache_dir):
        note(f"{split.kind} data from {split.source}: {split.counts}")
        for name, rows in (("train", split.train), ("eval", split.held)):
            table, counts = tokenize(rows, split.kind, tokenizer, data.max_len, progress=f"tokenizing {split.kind} {name}")
            note(f"{split.kind} {name} data: {counts}")
            require_rows(split.kind, name, split.source, counts, data.max_len)
            out.append(table)
    return tuple(out), notes


def cached_tokenized(data: DataSpec, tokenizer, cache_dir: str):
    """``load_tokenized``'s tables, tokenized once per (data, tokenizer) into
    ``<cache_dir>/tokens/<fingerprint>.safetensors`` and read from there by every later
    trial process; a file that fails its checks is recomputed with a warning."""
    key = tokens_fingerprint(data, tokenizer, cache_dir)
    if key is None:
        return load_tokenized(data, tokenizer, cache_dir)
    path = Path(cache_dir) / "tokens" / f"{key}.safetensors"
    if path.exists() and (tables := _read_tokens(path)) is not None:
        return tables
    tables, notes = _tokenized(data, tokenizer, cache_dir)
    arrays = {f"{name}.{column}.{part}": getattr(table[column], part)
              for name, table in zip(TABLES, tables) for column in table.columns for part in ("values", "offsets")}
    write_checked(path, arrays, {"notes": json.dumps(notes), "format": str(TOKENS_FORMAT)})
    return tables


def _read_tokens(path: Path) -> tuple[TokenTable, ...] | None:
    """The cached tables, if the file matches its content hash and holds every column of
    every table with consistent offsets; None (with a warning) otherwise. The lines the
    tokenization logged are logged again, so every trial's log says what was dropped."""
    checked = read_checked(path, "token cache")
    if checked is None:
        return None
    arrays, meta = checked
    try:
        tables = tuple(_table_from(arrays, name) for name in TABLES)
        notes = json.loads(meta["notes"])
    except (KeyError, ValueError) as e:
        log.warning("token cache %s does not hold the token tables (%s); recomputing it", path, e)
        return None
    for line in notes:
        log.info("%s", line)
    log.info("token tables read from the token cache %s", path)
    return tables


def _table_from(arrays: dict[str, np.ndarray], name: str) -> TokenTable:
    columns = {}
    for ids, mask in SEQUENCES[name.split("_")[0]]:
        for column in (ids, mask):
            columns[column] = Ragged(arrays[f"{name}.{column}.values"], arrays[f"{name}.{column}.offsets"])
        if not np.array_equal(columns[ids].offsets, columns[mask].offsets):
            raise ValueError(f"{name}: {ids} and {mask} differ in length")
    return TokenTable(columns)


def tokens_fingerprint(data: DataSpec, tokenizer, cache_dir: str) -> str | None:
    """What the token ids depend on: the data specs (sources, columns, templates, splits,
    eval_size, max_rows, max_len, seed), the data itself, the tokenizer's full definition
    and the libraries that apply it. None for a tokenizer that is not a fast one
    (``encode_joint`` refuses it)."""
    import datasets
    import tokenizers

    if not getattr(tokenizer, "is_fast", False):
        return None
    definition = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    key = {"format": TOKENS_FORMAT, "data": data.model_dump(mode="json"),
           "tokenizer": [type(tokenizer).__name__, tokenizer.eos_token_id, sorted(tokenizer.all_special_ids), definition],
           "sources": [source_identity(spec, kind, cache_dir) for kind, spec in (("sft", data.sft), ("pref", data.pref))],
           "libraries": [tokenizers.__version__, datasets.__version__]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def dataset_record(spec: DatasetSpec, kind: str, cache_dir: str, train_rows: int, eval_rows: int) -> dict:
    """One dataset as a run's input in MLflow: its source (the embedded default's file), a
    digest of ``source_identity``, the columns it is read by, and the rows each split kept."""
    resolved = _with_embedded_file(spec, kind, cache_dir).resolved(kind)
    identity = json.dumps(source_identity(spec, kind, cache_dir))
    where = "local" if resolved.is_local else "http" if "://" in resolved.source else "hugging_face"
    return {"name": kind, "source": resolved.source, "source_type": where,
            "digest": hashlib.sha256(identity.encode()).hexdigest()[:12], "columns": resolved.columns,
            "split": resolved.split, "eval_split": resolved.eval_split, "train_rows": train_rows, "eval_rows": eval_rows}


def source_identity(spec: DatasetSpec, kind: str, cache_dir: str) -> str | list[str]:
    """A local file (the embedded data too) by its bytes. A hub dataset, or a file behind a
    URL, by ``datasets``' own fingerprint of each split read: built from the dataset's name,
    config and the hub commit it resolved (a URL: its ETag), so a new revision is a new key."""
    spec = _with_embedded_file(spec, kind, cache_dir)
    if spec.is_local:
        return f"file:{files_digest([_existing(spec.source)])}"
    return [load_table(spec.source, split)._fingerprint for split in (spec.split, spec.eval_split) if split is not None]


@dataclass
class Counts:
    rows: int = 0
    truncated: int = 0
    dropped: int = 0

    def __str__(self) -> str:
        return f"{self.rows} rows, {self.truncated} truncated, {self.dropped} dropped (prompt alone >= max_len)"


def encode_joint(tokenizer, prompts: list[str], responses: list[str]) -> list[tuple[list[int], int]]:
    """(ids of prompt + response as one text, number of prompt tokens) per row.

    One text, not two: tokenized apart, ``"Assistant: "`` ends in a lone space token and
    ``"42"`` becomes ``4``, ``2`` where the joint text, as in pre-training, is ``Ġ4``, ``2``.
    A token is the prompt's when it ends inside the prompt (by character offsets); the one
    that straddles the seam is the response's, so the prompt's ids are a prefix of the ids.
    """
    if not tokenizer.is_fast:
        raise ConfigError(f"trial.model.name: the tokenizer {type(tokenizer).__name__} has no character offsets "
                          "(not a fast tokenizer); rightsweep needs them to mask the prompt of the joint text")
    enc = tokenizer([p + r for p, r in zip(prompts, responses)], return_offsets_mapping=True)
    special = set(tokenizer.all_special_ids)
    out = []
    for prompt, ids, offsets in zip(prompts, enc["input_ids"], enc["offset_mapping"]):
        n_prompt = next((k for k, (_, end) in enumerate(offsets) if end > len(prompt)), len(ids))
        end = len(ids)
        while end > n_prompt and ids[end - 1] in special and tuple(offsets[end - 1]) == (0, 0):
            end -= 1  # an end-of-text the tokenizer appends itself: ours follows
        out.append((ids[:end], n_prompt))
    return out


TOKENIZE_ROWS = 1024  # rows per tokenizer call: its Python lists of ids and offsets (~100 bytes a token) live for one call


class _SequenceBuilder:
    """One response column's ids and loss masks, gathered a chunk of rows at a time into
    flat arrays (masks vectorised from the prompt lengths)."""

    def __init__(self):
        self.ids, self.masks, self.lengths = [], [], []
        self._flat, self._lengths, self._prompts = [], [], []

    def add(self, ids: list[int], n_prompt: int) -> None:
        self._flat.extend(ids)
        self._lengths.append(len(ids))
        self._prompts.append(n_prompt)

    def flush(self) -> None:
        lengths = np.asarray(self._lengths, dtype=np.int64)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        position = np.arange(int(lengths.sum()), dtype=np.int64) - starts
        self.ids.append(np.asarray(self._flat, dtype=np.int32))
        self.masks.append((position >= np.repeat(np.asarray(self._prompts, dtype=np.int64), lengths)).astype(np.int8))
        self.lengths.append(lengths)
        self._flat, self._lengths, self._prompts = [], [], []

    def columns(self) -> tuple[Ragged, Ragged]:
        self.flush()
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(self.lengths))])
        return Ragged(np.concatenate(self.ids), offsets), Ragged(np.concatenate(self.masks), offsets)


def encoded_chunks(rows: Rows, tokenizer):
    """Per chunk of ``TOKENIZE_ROWS`` rows, each row's ``encode_joint`` result per response:
    the tokenizer's Python lists live for one chunk."""
    for start in range(0, len(rows), TOKENIZE_ROWS):
        part = rows.take(range(start, min(start + TOKENIZE_ROWS, len(rows))))
        yield list(zip(*[encode_joint(tokenizer, part.prompts, list(col)) for col in zip(*part.responses)]))


def tokenize(rows: Rows, kind: str, tokenizer, max_len: int, progress: str | None = None) -> tuple[TokenTable, Counts]:
    """Token ids and loss masks of every row (SFT: ``input_ids``, ``loss_mask``; pairs: the
    ``chosen_*`` and ``rejected_*`` of each). Each response ends in EOS and is cut from its
    end to fit ``max_len``; a row whose prompt leaves no room for a response token is dropped.
    A chunk of rows at a time, so memory follows the token table, not the tokenizer's lists;
    ``progress`` labels a progress bar of the rows."""
    eos = tokenizer.eos_token_id
    names = [("input_ids", "loss_mask")] if kind == "sft" else [("chosen_ids", "chosen_mask"), ("rejected_ids", "rejected_mask")]
    builders = [_SequenceBuilder() for _ in names]
    kept, truncated, dropped = 0, 0, 0
    bar = progress_bar(len(rows), progress or "", "row", show=progress is not None)
    for chunk in encoded_chunks(rows, tokenizer):
        bar.update(len(chunk))
        for encoded in chunk:
            if any(n_prompt >= max_len for _, n_prompt in encoded):
                dropped += 1
                continue
            kept += 1
            truncated += any(len(ids) + 1 > max_len for ids, _ in encoded)
            for builder, (ids, n_prompt) in zip(builders, encoded):
                builder.add((ids + [eos])[:max_len], n_prompt)
        for builder in builders:
            builder.flush()
    bar.close()
    table = TokenTable({name: col for builder, pair in zip(builders, names) for name, col in zip(pair, builder.columns())})
    return table, Counts(kept, truncated, dropped)


def _column_lists(table, cols: dict[str, str], source: str) -> dict[str, list]:
    """role -> that column as a Python list, read in one Arrow pass (iterating a ``datasets``
    table row by row, or a column of it, costs about 40 µs a row)."""
    _require_columns(table, cols, source)
    data = table.select_columns(sorted(set(cols.values()))).to_dict()
    return {role: data[name] for role, name in cols.items()}


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


def micro_batches(batch: dict[str, torch.Tensor], size: int, pairs: bool) -> list[dict[str, torch.Tensor]]:
    """A collated batch cut into micro-batches of ``size`` rows (``size`` pairs of a pair
    batch: its chosen and rejected rows stay together), each trimmed to its own longest
    row: right padding past it would only cost compute. One piece when it all fits."""
    rows = len(batch["ref_chosen"]) if pairs else len(batch["input_ids"])
    if size >= rows:
        return [batch]
    pieces = []
    for start in range(0, rows, size):
        stop = min(start + size, rows)
        index = torch.cat([torch.arange(start, stop), torch.arange(rows + start, rows + stop)]) if pairs else slice(start, stop)
        piece = {k: batch[k][index] for k in ("input_ids", "attention_mask", "loss_mask")}
        length = int(piece["attention_mask"].sum(1).max())
        piece = {k: v[:, :length] for k, v in piece.items()}
        if pairs:
            piece.update(ref_chosen=batch["ref_chosen"][start:stop], ref_rejected=batch["ref_rejected"][start:stop])
        pieces.append(piece)
    return pieces


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
