import math

import torch

from workers.losses import dpo_loss, sequence_logps, shift_for_causal_lm

LN2, LN3 = math.log(2), math.log(3)


def test_sequence_logps_sums_masked_label_logprobs():
    """Position 0: logits (0, 0), label 0 -> log 1/2. Position 1: logits (ln 3, 0), label 1
    -> log 1/(3+1) = -2 ln 2. Both masked in: -3 ln 2; only position 1: -2 ln 2."""
    logits = torch.tensor([[[0.0, 0.0], [LN3, 0.0]], [[0.0, 0.0], [LN3, 0.0]]])
    labels = torch.tensor([[0, 1], [0, 1]])
    mask = torch.tensor([[1, 1], [0, 1]])
    out = sequence_logps(logits, labels, mask)
    torch.testing.assert_close(out, torch.tensor([-3 * LN2, -2 * LN2]))


def test_sequence_logps_ignores_padding_label_values():
    """Masked-out labels may be anything, even -100: they contribute nothing."""
    logits = torch.tensor([[[0.0, 0.0], [LN3, 0.0]]])
    out = sequence_logps(logits, torch.tensor([[-100, 1]]), torch.tensor([[0, 1]]))
    torch.testing.assert_close(out, torch.tensor([-2 * LN2]))


def test_shift_for_causal_lm_aligns_prediction_with_next_token():
    logits = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    ids = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
    lg, lb, m = shift_for_causal_lm(logits, ids, mask)
    assert lg.shape == (2, 3, 3) and torch.equal(lg, logits[:, :3])
    assert torch.equal(lb, torch.tensor([[6, 7, 8], [2, 3, 4]]))
    assert torch.equal(m, torch.tensor([[0, 1, 1], [1, 1, 0]]))


def test_dpo_loss_is_log2_when_policy_equals_reference():
    logps = torch.tensor([-3.0, -7.5, -1.25])
    losses, chosen_r, rejected_r = dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.1)
    torch.testing.assert_close(losses, torch.full((3,), LN2))
    torch.testing.assert_close(chosen_r, torch.zeros(3))
    torch.testing.assert_close(rejected_r, torch.zeros(3))


def test_dpo_loss_hand_computed():
    """policy (c, r) = (-1, -3), reference (-2, -2), beta 0.5: margin (−1+3)−0 = 2,
    loss −log σ(0.5·2) = log(1 + e^−1) ≈ 0.313262; rewards 0.5·(−1+2) = 0.5 and 0.5·(−3+2) = −0.5."""
    pc = torch.tensor([-1.0], requires_grad=True)
    pr = torch.tensor([-3.0], requires_grad=True)
    losses, cr, rr = dpo_loss(pc, pr, torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    torch.testing.assert_close(losses, torch.tensor([math.log1p(math.exp(-1))]))
    torch.testing.assert_close(cr, torch.tensor([0.5]))
    torch.testing.assert_close(rr, torch.tensor([-0.5]))
    assert losses.requires_grad and not cr.requires_grad and not rr.requires_grad
    losses.sum().backward()
    # d/dpc of −log σ(β(pc − pr)) = −β(1 − σ(1)) = −0.5·σ(−1)
    torch.testing.assert_close(pc.grad, torch.tensor([-0.5 / (1 + math.e)]))


def _bf16_batch(rows=4, length=250, vocab=1000):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(rows, length, vocab, generator=g) * 3).bfloat16()
    labels = torch.randint(0, vocab, (rows, length), generator=g)
    mask = (torch.rand(rows, length, generator=g) < 0.9).long()
    return logits, labels, mask


def test_bf16_log_probs_are_summed_in_float32(monkeypatch):
    """250 response tokens summed in bf16 were off by 4-7 nats; in float32 the sum is within
    0.05 nats of the float64 sum of the same bf16 logits, in chunks of rows or not."""
    import workers.losses as losses

    logits, labels, mask = _bf16_batch()
    exact = sequence_logps(logits.double(), labels, mask)
    for rows_a_chunk in (None, 1):  # the default (here one chunk), then one row a chunk
        if rows_a_chunk:
            monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 250 * 1000)
        out = sequence_logps(logits, labels, mask)
        assert out.dtype == torch.float32
        assert (out.double() - exact).abs().max() < 0.05


def test_bf16_chunked_gradient_matches_the_float32_gradient(monkeypatch):
    """The chunks are recomputed in backward instead of kept: the gradient is the one of a
    float32 log-softmax over the same bf16 logits."""
    import workers.losses as losses

    logits, labels, mask = _bf16_batch(rows=3, length=20, vocab=50)
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 20 * 50)  # a row a chunk
    a = logits.clone().requires_grad_()
    sequence_logps(a, labels, mask).sum().backward()
    b = logits.float().requires_grad_()
    sequence_logps(b, labels, mask).sum().backward()
    torch.testing.assert_close(a.grad.float(), b.grad, atol=1e-2, rtol=0)
