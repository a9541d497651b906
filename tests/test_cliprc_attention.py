"""The relation decoder's attention with dropout (CPU path of
``cliprc.decoder.attention``): the same law as
``scaled_dot_product_attention(dropout_p=p)``, read back from its output."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmseg_ovss.models.cliprc.decoder import CrossAttention, attention

EPS = torch.finfo(torch.float32).eps


def _inputs(seed=0, heads=2, queries=48, keys=32, dims=8):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, queries, dims, generator=gen)
    k = torch.randn(1, heads, keys, dims, generator=gen)
    return q, k


def test_without_dropout_it_is_sdpa():
    q, k = _inputs()
    v = torch.randn(1, 2, 32, 8)
    assert torch.equal(attention(q, k, v, 0.0),
                       F.scaled_dot_product_attention(q, k, v))


def test_each_weight_is_dropped_or_scaled():
    """With v = identity the output row is the dropped weight row: every
    entry is 0 or softmax(q k^T / sqrt(d)) / (1 - p), and the dropped share
    matches p within 5 binomial standard deviations."""
    p = 0.1
    q, k = _inputs()
    keys = k.shape[-2]
    v = torch.eye(keys).expand(1, 2, keys, keys)
    torch.manual_seed(1)
    out = attention(q, k, v, p)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]),
                            dim=-1)
    dropped = out == 0
    assert (weights > 0).all()  # so a zero output means a dropped weight
    kept = ~dropped
    scaled = weights / (1 - p)
    tol = 8 * EPS * scaled.abs().max()
    assert (out[kept] - scaled[kept]).abs().max() <= tol
    n = dropped.numel()
    share = dropped.sum().item() / n
    assert abs(share - p) <= 5 * math.sqrt(p * (1 - p) / n)


def test_gradient_is_that_of_the_masked_attention():
    """Backward equals the direct computation with the same mask (read
    from the output as above)."""
    p = 0.25
    q, k = _inputs(seed=3)
    keys, dims = k.shape[-2], q.shape[-1]
    v_rand = torch.randn(1, 2, keys, 5)
    q1, k1 = q.clone().requires_grad_(), k.clone().requires_grad_()
    v = torch.eye(keys).expand(1, 2, keys, keys)
    torch.manual_seed(7)
    probe = attention(q, k, v, p)  # the mask of the next draw, read back
    kept = (probe != 0).float()
    torch.manual_seed(7)
    v1 = v_rand.clone().requires_grad_()
    # the same draw: torch.rand is called once per call, same shape
    out = attention(q1, k1, torch.cat([v, v1], dim=-1), p)[..., keys:]
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    q2, k2 = q.clone().requires_grad_(), k.clone().requires_grad_()
    v2 = v_rand.clone().requires_grad_()
    weights = torch.softmax(q2 @ k2.transpose(-2, -1) / math.sqrt(dims),
                            dim=-1)
    direct = (weights * kept) @ v2 / (1 - p)
    direct.backward(grad_out)
    assert torch.allclose(out, direct, rtol=0, atol=64 * EPS)
    for ours, theirs in ((q1, q2), (k1, k2), (v1, v2)):
        scale = theirs.grad.abs().max()
        assert (ours.grad - theirs.grad).abs().max() <= \
            64 * EPS * math.sqrt(keys) * scale


def test_expectation_is_the_undropped_attention():
    """Averaged over draws the output tends to the attention without
    dropout (tolerance: 5 standard errors of the mean of the draws)."""
    p, draws = 0.1, 400
    q, k = _inputs(seed=5, heads=1, queries=6, keys=10)
    v = torch.randn(1, 1, 10, 4)
    torch.manual_seed(0)
    samples = torch.stack([attention(q, k, v, p) for _ in range(draws)])
    exact = F.scaled_dot_product_attention(q, k, v)
    error = (samples.mean(0) - exact).abs()
    stderr = samples.std(0) / math.sqrt(draws)
    assert (error <= 5 * stderr + 1e-6).all()


@pytest.mark.parametrize('p', [0.0, 1.0])
def test_limits(p):
    q, k = _inputs()
    v = torch.randn(1, 2, 32, 8)
    out = attention(q, k, v, p)
    if p == 1.0:
        assert torch.count_nonzero(out) == 0
    assert out.shape == (1, 2, 48, 8)


def test_cross_attention_drops_only_in_training():
    layer = CrossAttention(16, 2, attn_dropout=0.5)
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    layer.eval()
    assert torch.equal(layer(x, memory), layer(x, memory))
    layer.train()
    torch.manual_seed(0)
    first = layer(x, memory)
    torch.manual_seed(1)
    assert not torch.equal(first, layer(x, memory))
