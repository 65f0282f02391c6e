"""Pure loss functions on tensors: no models, no Ray, no MLflow.

Shape convention: ``logits`` are already aligned with ``labels``: ``logits[:, t]`` is the
model's prediction for ``labels[:, t]``. A causal LM's raw output must be shifted by the
caller first (``logits[:, :-1]`` against ``input_ids[:, 1:]``); ``shift_for_causal_lm``
does that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift_for_causal_lm(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Position t predicts token t+1: drop the last logit and the first label."""
    return logits[:, :-1], input_ids[:, 1:], loss_mask[:, 1:]


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-prob of each label token, shape [B, T].

    ``log_softmax`` then ``gather`` would materialise a second [B, T, V] tensor;
    the gathered logit minus ``logsumexp`` gives the same values with one.
    """
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of the label tokens' log-probs where ``loss_mask`` is true, shape [B]."""
    # Padding labels may hold any id (even -100); gather needs a valid index.
    safe_labels = labels.masked_fill(~loss_mask.bool(), 0)
    return (token_logps(logits, safe_labels) * loss_mask).sum(-1)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over every masked-in token of the batch (a scalar).

    Token-level mean, not a mean of per-sequence means: long responses weigh more, as in
    the usual SFT objective.
    """
    mask = loss_mask.to(logits.dtype)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        labels.masked_fill(~loss_mask.bool(), 0).reshape(-1),
        reduction="none",
    )
    return (nll * mask.reshape(-1)).sum() / mask.sum().clamp_min(1.0)


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
