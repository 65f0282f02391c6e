"""What a model does on held-out prompts: batched greedy generation and the judges' rates.

The prompts and the references come from the held-out token tables themselves: a row's
prompt is its ids before the first response token, its reference the response decoded
(SFT: the answer; preference: the chosen response). So generation sees exactly the
prompt tokens the losses are computed on, and needs no second copy of the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workers.judges import SFT_JUDGES, embedded_win


@dataclass(frozen=True)
class Prompts:
    """Held-out prompts of one table: token ids and the reference response text."""

    ids: list[np.ndarray]
    texts: list[str]  # the prompts decoded (what a reward model and the samples read)
    references: list[str]


def held_out_prompts(table, ids_col: str, mask_col: str, tokenizer, n: int, rank: int = 0, world: int = 1) -> Prompts:
    """This rank's share (every world-th) of the first ``n`` rows' prompts (ids where the
    response mask is still 0) and their reference responses, special tokens (the EOS) dropped."""
    ids, texts, references = [], [], []
    for i in range(rank, min(n, len(table)), world):
        row, mask = table[ids_col][i], table[mask_col][i]
        first = int(np.argmax(mask != 0))
        ids.append(row[:first])
        texts.append(tokenizer.decode(row[:first], skip_special_tokens=True))
        references.append(tokenizer.decode(row[first:][mask[first:] != 0], skip_special_tokens=True))
    return Prompts(ids, texts, references)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[np.ndarray], batch_size: int, max_new_tokens: int, device) -> list[str]:
    """Greedy continuations, left-padded batches with the KV cache (``model.generate``),
    cut at the first EOS and decoded without special tokens."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):  # left padding: every row's last prompt token is at the same place
            input_ids[i, width - len(p):] = torch.as_tensor(p, dtype=torch.long)
            attention[i, width - len(p):] = 1
        generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=False,
                                   max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos, use_cache=True)
        for row in generated[:, width:].tolist():
            out.append(tokenizer.decode(row[: row.index(eos)] if eos in row else row, skip_special_tokens=True))
    return out


def sft_accuracy(generations: list[str], references: list[str], judge: str) -> list[bool]:
    return [SFT_JUDGES[judge](g, r) for g, r in zip(generations, references)]


def embedded_wins(generations: list[str]) -> list[bool]:
    return [embedded_win(g) for g in generations]


def samples(kind: str, prompts: Prompts, generations: list[str], passed: list, n: int) -> list[dict]:
    """The first ``n`` prompts' generations as text, with the judge's verdict."""
    return [{"kind": kind, "prompt": prompts.texts[i], "reference": prompts.references[i], "generation": generations[i],
             "passed": passed[i]} for i in range(min(n, len(generations)))]
