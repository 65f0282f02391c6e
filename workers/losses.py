"""Pure loss functions on tensors: no models, no Ray, no MLflow.

Shape convention: ``logits`` are already aligned with ``labels``: ``logits[:, t]`` is the
model's prediction for ``labels[:, t]``. A causal LM's raw output must be shifted by the
caller first (``logits[:, :-1]`` against ``input_ids[:, 1:]``); ``shift_for_causal_lm``
does that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint


def shift_for_causal_lm(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Position t predicts token t+1: drop the last logit and the first label."""
    return logits[:, :-1], input_ids[:, 1:], loss_mask[:, 1:]


FULL_PRECISION = (torch.float32, torch.float64)
CHUNK_ELEMENTS = 1 << 25  # logits per float32 chunk (128 MiB) when the model's dtype is half precision


def _gathered_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # log_softmax then gather would materialise a second [B, T, V] tensor; the gathered
    # logit minus logsumexp gives the same values with one.
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def float32_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-prob of each label, the logits upcast to float32 first (a no-op for float32)."""
    return _gathered_logps(logits.float(), labels)


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-prob of each label token, shape [B, T], in float32 (float64 for float64 logits)
    whatever the logits' dtype.

    Half-precision logits are upcast a chunk of rows at a time: a float32 copy of all
    [B, T, V] logits at once would double the peak memory of the step. Under autograd each
    chunk is recomputed in backward instead of kept (``checkpoint``), so the float32
    copies never all live together there either.
    """
    if logits.dtype in FULL_PRECISION:
        return _gathered_logps(logits, labels)
    rows = max(1, CHUNK_ELEMENTS // max(1, logits.shape[1] * logits.shape[2]))
    keep_graph = torch.is_grad_enabled() and logits.requires_grad
    parts = []
    for lg, lb in zip(logits.split(rows), labels.split(rows)):
        if keep_graph:
            parts.append(torch.utils.checkpoint.checkpoint(float32_logps, lg, lb, use_reentrant=False))
        else:
            parts.append(float32_logps(lg, lb))
    return torch.cat(parts)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of the label tokens' log-probs where ``loss_mask`` is true, shape [B], float32:
    summed in bf16, 250 response tokens were off by 4-7 nats."""
    # Padding labels may hold any id (even -100); gather needs a valid index.
    safe_labels = labels.masked_fill(~loss_mask.bool(), 0)
    logps = token_logps(logits, safe_labels)
    return (logps * loss_mask.to(logps.dtype)).sum(-1)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO loss per pair, with the implicit rewards ``beta·(policy − ref)``, detached.

    ``-log σ(β·[(π_c − π_r) − (ref_c − ref_r)])``, each term a sequence log-prob sum.
    """
    margin = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    losses = -F.logsigmoid(beta * margin)
    chosen_rewards = (beta * (policy_chosen_logps - ref_chosen_logps)).detach()
    rejected_rewards = (beta * (policy_rejected_logps - ref_rejected_logps)).detach()
    return losses, chosen_rewards, rejected_rewards
