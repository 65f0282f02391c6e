"""``rightsweep inspect``: what a config's model and data will make of each other, in seconds
and without Ray — rows, duplicates, the held-out split, token lengths, how many rows fit
``max_len`` — and the settings that would work. It runs the sweep's own checks (preflight,
the split, the "no row fits" refusal), so what it refuses the sweep refuses, in the same words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from orchestrator.config import ConfigError, ExperimentConfig
from workers.config import EMBEDDED

PERCENTILES = (50, 90, 99, 100)
FEW_EVAL_ROWS = 8
KEEP_WHOLE = 0.95  # the suggested max_len keeps this share of rows whole (no response cut)


@dataclass(frozen=True)
class Lengths:
    """Token lengths of a dataset's rows: the rendered prompt's, and per response (one for SFT,
    chosen and rejected for pairs) the whole sequence's with its EOS, as ``tokenize`` counts them."""

    prompt: np.ndarray  # [rows]
    full: np.ndarray  # [rows, responses]

    @property
    def response(self) -> np.ndarray:
        return self.full - self.prompt[:, None]


def token_lengths(rows, tokenizer) -> Lengths:
    from workers.data import encoded_chunks

    prompt, full = [], []
    for chunk in encoded_chunks(rows, tokenizer):
        for encoded in chunk:
            prompt.append(encoded[0][1])
            full.append([len(ids) + 1 for ids, _ in encoded])
    width = len(rows.responses[0]) if len(rows) else 1
    return Lengths(np.asarray(prompt, dtype=np.int64), np.asarray(full, dtype=np.int64).reshape(-1, width))


def characters_per_token(rows, lengths: Lengths) -> float:
    """Characters of text per token (EOS not counted): about 4 for English with a hub model's
    tokenizer; near 1 with one that does not know the text."""
    chars = sum(len(p) * len(r) + sum(map(len, r)) for p, r in zip(rows.prompts, rows.responses))
    tokens = int(lengths.prompt.sum()) * lengths.full.shape[1] + int(lengths.response.sum()) - lengths.full.size
    return chars / tokens if tokens else math.nan


def fit_counts(lengths: Lengths, max_len: int):
    """``workers.data.tokenize``'s counts at ``max_len``, from the lengths alone: a row is
    dropped when its prompt leaves no room for a response token, truncated when a response
    (with EOS) runs past ``max_len``."""
    from workers.data import Counts

    dropped = lengths.prompt >= max_len
    truncated = ~dropped & (lengths.full > max_len).any(axis=1)
    return Counts(rows=int((~dropped).sum()), truncated=int(truncated.sum()), dropped=int(dropped.sum()))


def whole_max_len(lengths: list[Lengths], share: float = KEEP_WHOLE) -> int:
    """The smallest max_len at which ``share`` of all rows fit whole (every response uncut)."""
    longest = np.concatenate([x.full.max(axis=1) for x in lengths if len(x.prompt)])
    return int(np.sort(longest)[max(0, math.ceil(share * len(longest)) - 1)])


def percentiles(values: np.ndarray) -> str:
    if not len(values):
        return "–"
    return ", ".join(f"{'max' if q == 100 else f'p{q}'} {int(np.percentile(values, q, method='higher'))}" for q in PERCENTILES)


def suggested_max_len(lengths: list[Lengths], limit: int | None) -> int:
    """The max_len at which ``KEEP_WHOLE`` of all rows fit whole and every split keeps a row
    (its shortest prompt and one response token), rounded up to a multiple of 8, within the
    model's positions."""
    keeps_one = max(int(x.prompt.min()) + 1 for x in lengths if len(x.prompt))
    want = -(-max(whole_max_len(lengths), keeps_one) // 8) * 8
    return min(want, limit) if limit is not None else want


def inspect(cfg: ExperimentConfig, echo=print) -> int:
    """Print the report; 0 when a sweep of ``cfg`` would start, 2 (after the report) when it
    would refuse the data, with the sweep's message."""
    from orchestrator.preflight import preflight
    from workers.data import load_splits, require_rows
    from workers.estimate import model_config
    from workers.model import load_tokenizer, max_positions

    cfg = preflight(cfg)
    trial, data = cfg.trial, cfg.trial.data
    if trial.model.name == EMBEDDED:
        echo("model: embedded (built once under the cache folder if it is not there yet: about a minute)")
    tokenizer = load_tokenizer(trial.model, trial.cache_dir)
    limit = max_positions(model_config(trial.model))
    echo(f"model: {trial.model.name}: tokenizer of {len(tokenizer)} tokens, {limit or 'unknown'} positions; "
         f"max_len {data.max_len}")
    real = [k for k, spec in (("sft", data.sft), ("pref", data.pref)) if spec.source != EMBEDDED]
    if trial.model.name == EMBEDDED and real:
        echo(f"  note: the embedded model is for the embedded data: its tokenizer was trained on the generated tasks "
             f"alone (see the characters a token below) and it has {limit} positions. For your own "
             f"{' and '.join(real)} data, set trial.model.name to your model (a hub name or a save_pretrained folder)")
    refusal, refused = None, []
    while True:  # an eval_size the data cannot hold: reported, and the report goes on at the default
        try:
            splits = load_splits(data, trial.cache_dir)
            break
        except ConfigError as e:
            kind = next((k for k in ("sft", "pref") if str(e).startswith(f"trial.data.{k}.eval_size:")), None)
            if kind is None or kind in refused:  # not the eval_size, or too few prompts for any
                raise
            refusal = refusal or str(e)
            echo(f"refused: {e}; below, at the default eval_size")
            data = data.model_copy(update={kind: getattr(data, kind).model_copy(update={"eval_size": None})})
            refused.append(kind)
    fixes = [f"--set trial.data.{split.kind}.eval_size={len(split.held)}" for split in splits if split.kind in refused]
    lengths, names = [], []
    for split, spec in zip(splits, (data.sft, data.pref)):
        c = split.counts
        echo(f"{split.kind} data: {split.source}")
        echo(f"  {c.rows} rows, {c.duplicates} exact duplicates dropped, {c.shared_prompt} rows share a prompt; held out: "
             f"{len(split.held)} rows of {c.held_prompts} prompts (eval_size {spec.eval_size or 'default'}; {c.unused} more "
             f"rows of those prompts unused); training: {len(split.train)} rows ({c.excluded} dropped: their prompt is "
             "held out of the other dataset)")
        for name, rows in (("train", split.train), ("eval", split.held)):
            x = token_lengths(rows, tokenizer)
            lengths.append(x)
            names.append(f"{split.kind} {name}")
            responses = ("response",) if split.kind == "sft" else ("chosen", "rejected")
            echo(f"  {name} tokens: prompt {percentiles(x.prompt)}; "
                 + "; ".join(f"{r} {percentiles(x.response[:, i])}" for i, r in enumerate(responses))
                 + f"; whole {percentiles(x.full.max(axis=1))}; {characters_per_token(rows, x):.1f} characters a token")
            counts = fit_counts(x, data.max_len)
            echo(f"  {name} at max_len {data.max_len}: {counts}")
            if name == "eval" and 0 < len(rows) < FEW_EVAL_ROWS:
                echo(f"  note: {len(rows)} held-out row(s): the {split.kind} loss on them, one axis of the front, is a noisy "
                     "estimate")
            if refusal is None:
                try:
                    require_rows(split.kind, name, split.source, counts, data.max_len)
                except ConfigError as e:
                    refusal = str(e)
    best = suggested_max_len(lengths, limit)
    at_best = [fit_counts(x, best) for x in lengths]
    why = ("the model's positions" if limit is not None and best == limit else
           f"{KEEP_WHOLE:.0%} of the rows fit whole, every split keeps a row")
    echo(f"at max_len {best} ({why}): " + "; ".join(f"{n} {c}" for n, c in zip(names, at_best)))
    if any(c.rows == 0 for c in at_best):
        empty = ", ".join(n for n, c in zip(names, at_best) if c.rows == 0)
        echo(f"settings that would work: none with this model: no {empty} row fits in any max_len it takes; use a model "
             "with more positions (trial.model.name) or data with shorter prompts")
    else:
        fixes += [f"--set trial.data.max_len={best}"] if best != data.max_len else []
        echo("settings that would work: " + (" ".join(fixes) if fixes else "these"))
    if refusal is not None:
        raise ConfigError(refusal)
    return 0
