"""Log-probs through the chunked LM head, and the step's loss over micro-batches."""

import pytest
import torch

import workers.forward as forward
from workers.losses import sequence_logps, shift_for_causal_lm


def _head_batch(rows=3, length=11, width=8, vocab=50, dtype=torch.float32):
    """Hidden states of ``length`` positions; labels of the ``length - 1`` next tokens."""
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(width, vocab, bias=False).to(dtype)
    hidden = torch.randn(rows, length, width, generator=g).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (rows, length - 1), generator=g)
    return head, hidden, labels


def test_the_chunked_head_gives_the_log_probs_and_gradients_of_the_whole_logits(monkeypatch):
    """7 positions a chunk (of 30), each recomputed in backward: the values and gradients
    of one log-softmax over all the logits."""
    head, hidden, labels = _head_batch()
    whole = torch.log_softmax(head(hidden)[:, :-1], -1).gather(-1, labels[..., None]).squeeze(-1)
    whole.sum().backward()
    expected = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    monkeypatch.setattr(forward, "CHUNK_ELEMENTS", 7 * 50)
    chunked = forward.next_token_logps(hidden, head, labels)
    chunked.sum().backward()
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(hidden.grad, expected[0])
    torch.testing.assert_close(head.weight.grad, expected[1])


def test_chunks_of_bf16_logits_are_upcast_to_float32(monkeypatch):
    head, hidden, labels = _head_batch(dtype=torch.bfloat16)
    exact = torch.log_softmax(head(hidden)[:, :-1].double(), -1).gather(-1, labels[..., None]).squeeze(-1)
    monkeypatch.setattr(forward, "CHUNK_ELEMENTS", 7 * 50)
    out = forward.next_token_logps(hidden, head, labels)
    assert out.dtype == torch.float32
    assert (out.double() - exact).abs().max() < 1e-5


@pytest.fixture(scope="module")
def model(cache_dir):
    from workers.config import ModelSpec
    from workers.model import load_policy

    return load_policy(ModelSpec(), cache_dir, torch.device("cpu")).eval()


def _batch(lengths: list[int], responses: list[int], vocab: int = 300) -> dict:
    """Right-padded rows of the given lengths, the loss on each one's last ``responses``."""
    g = torch.Generator().manual_seed(1)
    longest = max(lengths)
    ids = torch.randint(0, vocab, (len(lengths), longest), generator=g)
    real = torch.arange(longest) < torch.tensor(lengths)[:, None]
    loss_mask = torch.zeros_like(ids)
    for row, (n, r) in enumerate(zip(lengths, responses)):
        loss_mask[row, n - r:n] = 1
    return {"input_ids": ids, "attention_mask": real.long(), "loss_mask": loss_mask}


def test_batch_log_probs_are_those_of_the_models_own_logits(model):
    batch = _batch([12, 7, 9], [5, 2, 4])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = sequence_logps(*shift_for_causal_lm(logits, batch["input_ids"], batch["loss_mask"]))
        logps, tokens = forward.batch_logps(model, batch)
    assert torch.equal(logps, expected)  # one chunk: the same head, the same bits
    assert tokens.tolist() == [5, 2, 4]


def test_the_sft_loss_over_micro_batches_is_the_token_mean_of_the_whole_batch(model, cache_dir):
    """Rows of 10 and 1 response tokens, a micro-batch each: the step's loss is the mean
    over all 11 tokens, not the mean of the two rows' means."""
    from workers.config import TrainSpec
    from workers.loop import objective_pass

    batch = _batch([14, 6], [10, 1])
    with torch.no_grad():
        logps, tokens = forward.batch_logps(model, batch)
        token_mean = float(-logps.sum() / tokens.sum())
        row_means = float((-logps / tokens).mean())
        t = TrainSpec(batch_size=2, micro_batch_size=1)
        loss, counted = objective_pass("sft", model, batch, t, torch.device("cpu"))
    assert counted == 11
    assert float(loss) == pytest.approx(token_mean, rel=1e-6)
    assert abs(token_mean - row_means) > 0.01  # the two weightings differ on this batch
