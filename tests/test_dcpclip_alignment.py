"""Text-guided alignment (DCP-CLIP Eqs. 7-12) against direct computations."""
import math

import pytest
import torch

from mmseg_ovss.models.dcpclip.text_guided_alignment import (
    CostFusionAttention, CrossModalAlignment, TextGuidedAlignment,
    TextualGuidance)
from mmseg_ovss.utils.errors import OVSSConfigError

DTYPE = torch.float64
EPS = torch.finfo(DTYPE).eps


def tol(n):
    return 100 * EPS * math.sqrt(n)


def linear(layer, x):
    return x @ layer.weight.t() + layer.bias


def layer_norm(norm, x):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def mlp(seq, x):
    hidden = linear(seq[0], x)
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    return linear(seq[2], hidden)


def attention_rows(q, k, v, heads, keep=None):
    """Per query row and head: explicit softmax(q k / sqrt(d)) v."""
    length, width = q.shape
    d = width // heads
    out = torch.zeros(length, width, dtype=q.dtype)
    keys = range(k.shape[0]) if keep is None else keep
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        for i in range(length):
            scores = [torch.dot(q[i, sl], k[j, sl]) / math.sqrt(d)
                      for j in keys]
            top = max(scores)
            weights = [torch.exp(s - top) for s in scores]
            total = sum(weights)
            out[i, sl] = sum(w / total * v[j, sl]
                             for w, j in zip(weights, keys))
    return out


def test_textual_guidance_concatenates_the_parts():
    torch.manual_seed(0)
    guide = TextualGuidance(6, 5, prompt_dims=3).to(DTYPE)
    text = torch.randn(2, 4, 6, dtype=DTYPE)
    logits = torch.randn(2, 4, dtype=DTYPE)
    valid = torch.ones(2, 4, dtype=torch.bool)
    out, out_valid = guide(text, logits, valid)
    for b in range(2):
        for c in range(4):
            row = torch.cat([text[b, c], guide.prompt, logits[b, c:c + 1]])
            assert torch.allclose(out[b, c], linear(guide.proj, row),
                                  atol=tol(10))
    assert torch.equal(out_valid, valid)


@pytest.mark.parametrize('parts,width', [
    (dict(text=True, prompt=True, cls_logits=True), 6 + 3 + 1),
    (dict(text=True, prompt=True, cls_logits=False), 6 + 3),
    (dict(text=True, prompt=False, cls_logits=False), 6)])
def test_table_v_switches(parts, width):
    guide = TextualGuidance(6, 5, prompt_dims=3, **parts)
    assert guide.proj.in_features == width
    assert (guide.prompt is not None) == parts['prompt']


def test_prompt_tokens_append_guidance_rows():
    guide = TextualGuidance(6, 5, prompt_mode='tokens', num_prompt_tokens=3)
    valid = torch.tensor([[True, False]])
    out, out_valid = guide(torch.randn(1, 2, 6), torch.randn(1, 2), valid)
    assert out.shape == (1, 5, 5)
    assert torch.equal(out[0, 2:], guide.prompt_tokens)
    assert out_valid.tolist() == [[True, False, True, True, True]]


def project(layer, x):
    return x if isinstance(layer, torch.nn.Identity) else linear(layer, x)


@pytest.mark.parametrize('out_proj', [True, False])
def test_cross_attention_matches_eqs_8_to_10(out_proj):
    torch.manual_seed(0)
    heads = 2
    ca = CrossModalAlignment(8, 6, num_heads=heads,
                             out_proj=out_proj).to(DTYPE)
    patches = torch.randn(2, 5, 8, dtype=DTYPE)
    guidance = torch.randn(2, 4, 6, dtype=DTYPE)
    valid = torch.tensor([[True, True, True, True],
                          [True, False, True, False]])
    out = ca(patches, guidance, valid)
    for b in range(2):
        keep = [j for j in range(4) if valid[b, j]]
        attended = attention_rows(linear(ca.q, patches[b]),
                                  linear(ca.k, guidance[b]),
                                  linear(ca.v, guidance[b]), heads, keep)
        x = layer_norm(ca.norm1, patches[b] + project(ca.proj, attended))
        want = layer_norm(ca.norm2, x + mlp(ca.mlp, x))
        assert torch.allclose(out[b], want, atol=tol(8 * 4))


def direct_fusion(sa, cost, patches, windows=None):
    """Eqs. 11-12 per image, class and window, with explicit loops."""
    batch, classes, dims, height, width = cost.shape
    out = torch.zeros_like(cost)
    projected = linear(sa.patch_proj, patches)
    for b in range(batch):
        for c in range(classes):
            x = cost[b, c].flatten(1).t()
            fused = torch.cat([x, projected[b]], dim=1)
            q, k, v = (linear(sa.q, fused), linear(sa.k, fused),
                       linear(sa.v, fused))
            attended = torch.zeros_like(x)
            groups = [list(range(height * width))]
            if windows:
                groups = [[y * width + x_ for y in range(r, r + windows)
                           for x_ in range(s, s + windows)]
                          for r in range(0, height, windows)
                          for s in range(0, width, windows)]
            for group in groups:
                rows = attention_rows(q[group], k[group], v[group],
                                      sa.num_heads)
                attended[group] = rows
            y = layer_norm(sa.norm1, x + project(sa.proj, attended))
            y = layer_norm(sa.norm2, y + mlp(sa.mlp, y))
            out[b, c] = y.t().reshape(dims, height, width)
    return out


@pytest.mark.parametrize('window,out_proj', [(None, True), (2, True),
                                             (None, False)])
def test_cost_fusion_matches_eqs_11_12(window, out_proj):
    torch.manual_seed(1)
    sa = CostFusionAttention(4, 6, num_heads=2, window_size=window,
                             out_proj=out_proj).to(DTYPE)
    cost = torch.randn(2, 3, 4, 4, 4, dtype=DTYPE)
    patches = torch.randn(2, 16, 6, dtype=DTYPE)
    out = sa(cost, patches)
    assert torch.allclose(out, direct_fusion(sa, cost, patches, window),
                          atol=tol(8 * 16))


def test_branch_switches_table_iv():
    torch.manual_seed(0)
    cost = torch.randn(1, 2, 8, 3, 3)
    patches = torch.randn(1, 16, 3, 3)
    text, logits = torch.randn(1, 2, 16), torch.randn(1, 2)
    valid = torch.ones(1, 2, dtype=torch.bool)
    none = TextGuidedAlignment(16, 8, ca=False, sa=False)
    assert torch.equal(none(cost, patches, text, logits, valid), cost)
    ca_only = TextGuidedAlignment(16, 8, ca=True, sa=False)
    assert ca_only.cross_attention is not None
    assert not ca_only.fusion.attention
    sa_only = TextGuidedAlignment(16, 8, ca=False, sa=True)
    assert sa_only.cross_attention is None and sa_only.guidance is None
    both = TextGuidedAlignment(16, 8, ca_heads=4, sa_heads=2)
    for module in (ca_only, sa_only, both):
        out = module(cost, patches, text, logits, valid)
        assert out.shape == cost.shape and torch.isfinite(out).all()
        chunked = module(cost, patches, text, logits, valid,
                         class_chunk_size=1)
        eps = torch.finfo(torch.float32).eps
        assert torch.allclose(out, chunked, atol=1000 * eps)


def test_ca_only_reaches_the_cost_through_the_concatenation():
    torch.manual_seed(0)
    tga = TextGuidedAlignment(16, 8, ca=True, sa=False, ca_heads=4).to(DTYPE)
    cost = torch.randn(1, 2, 8, 2, 2, dtype=DTYPE)
    patches = torch.randn(1, 4, 16, dtype=DTYPE)
    text, logits = torch.randn(1, 2, 16, dtype=DTYPE), torch.randn(1, 2,
                                                                   dtype=DTYPE)
    valid = torch.ones(1, 2, dtype=torch.bool)
    refined = tga.cross_attention(
        patches, *tga.guidance(text, logits, valid))
    out = tga(cost, patches, text, logits, valid)
    fusion = tga.fusion
    for c in range(2):
        x = cost[0, c].flatten(1).t()
        fused = torch.cat([x, linear(fusion.patch_proj, refined[0])], dim=1)
        want = x + linear(fusion.fuse, fused)
        assert torch.allclose(out[0, c].flatten(1).t(), want, atol=tol(32))


def test_bad_guidance_key():
    with pytest.raises(OVSSConfigError,
                       match=r"guidance option\(s\) \['logits'\]; use "
                       r"\['cls_logits', 'prompt', 'text'\]"):
        TextGuidedAlignment(16, 8, guidance=dict(logits=True))
    with pytest.raises(OVSSConfigError, match='must be a dict'):
        TextGuidedAlignment(16, 8, guidance=True)
    with pytest.raises(OVSSConfigError, match='per-class part'):
        TextualGuidance(4, 4, text=False, prompt=False, cls_logits=False)
