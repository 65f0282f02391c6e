"""A batch's sequence log-probs from a causal LM, without the whole batch's logits.

The model runs up to its final hidden states (``logits_to_keep=1``: its own head sees one
position); the head is then applied here, a chunk of positions at a time. For Llama-3's
128k vocabulary, 8 sequences of 1024 tokens would otherwise be 4 GiB of float32 logits,
and as much again for their gradient.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.utils.checkpoint

from workers.losses import CHUNK_ELEMENTS, float32_logps, sequence_logps, shift_for_causal_lm


def _base(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model under DDP and peft wrappers."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    get_base = getattr(model, "get_base_model", None)  # peft
    return get_base() if get_base is not None else model


@functools.lru_cache(maxsize=32)
def _keeps_logits(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _chunk_logps(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return float32_logps(head(hidden), labels)


def next_token_logps(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """[B, T-1] float32 log-probs of ``labels`` (the ids from position 1 on) from the final
    hidden states [B, T, H]: position t predicts token t + 1.

    When the logits fit one chunk, the head runs once over every position and the last is
    dropped, exactly as the model's own head and the caller's shift would (the same
    shapes, so the same bits). Else each chunk of positions goes through ``checkpoint``:
    backward recomputes its logits instead of keeping them, so one chunk's logits live at
    a time."""
    rows, length, width = hidden.shape
    vocab = head.weight.shape[0]
    if rows * length * vocab <= CHUNK_ELEMENTS:
        return float32_logps(head(hidden)[:, :-1], labels)
    per_chunk = max(1, CHUNK_ELEMENTS // vocab)
    flat_h, flat_l = hidden[:, :-1].reshape(-1, width), labels.reshape(-1)
    keep_graph = torch.is_grad_enabled() and hidden.requires_grad
    parts = []
    for h, lb in zip(flat_h.split(per_chunk), flat_l.split(per_chunk)):
        if keep_graph:
            parts.append(torch.utils.checkpoint.checkpoint(_chunk_logps, head, h, lb, use_reentrant=False))
        else:
            parts.append(_chunk_logps(head, h, lb))
    return torch.cat(parts).reshape(rows, length - 1)


def batch_logps(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence log-probs [B] over the response tokens, response tokens per row [B]).

    ``model`` is called as is (under DDP its forward must run for the gradient hooks); a
    model whose forward has no ``logits_to_keep`` gives its full logits instead."""
    base = _base(model)
    ids, mask = batch["input_ids"], batch["loss_mask"]
    if not _keeps_logits(type(base)):
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
        shifted = shift_for_causal_lm(logits, ids, mask)
        return sequence_logps(*shifted), shifted[2].sum(-1)
    out = model(input_ids=ids, attention_mask=batch["attention_mask"], output_hidden_states=True, logits_to_keep=1)
    labels, loss_mask = ids[:, 1:], mask[:, 1:]
    safe_labels = labels.masked_fill(~loss_mask.bool(), 0)  # padding may hold any id; gather needs a valid one
    logps = next_token_logps(out.hidden_states[-1], base.get_output_embeddings(), safe_labels)
    return (logps * loss_mask.to(logps.dtype)).sum(-1), loss_mask.sum(-1)


def pair_logps(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs of the chosen and rejected halves of a collated pair batch."""
    return batch_logps(model, batch)[0].chunk(2)
