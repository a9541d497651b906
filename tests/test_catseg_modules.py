"""CAT-Seg's building blocks against direct computations of their formulas.

Each block is compared with a computation written out independently
(explicit loops or einsum over the concatenated inputs the authors' code
uses), on small random tensors. Tolerances follow the float32 rounding of
the reductions: ``k * eps * sqrt(n)`` for n-term sums.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import init_default_scope

from mmseg.registry import MODELS
from mmseg_ovss.models.catseg.class_aggregation import (ClassAggregation,
                                                        linear_attention)
from mmseg_ovss.models.catseg.cost_volume import (CostEmbedding,
                                                  cosine_cost_volume)
from mmseg_ovss.models.catseg.decoder import UpsamplingDecoder
from mmseg_ovss.models.catseg.loss import PixelBCELoss, pixel_bce_with_logits
from mmseg_ovss.models.blocks.guided_swin import (MASK_VALUE,
                                                  GuidedShiftWindowMSA,
                                                  window_region_mask)
from mmseg_ovss.models.catseg.spatial_aggregation import SpatialAggregation
from mmseg_ovss.utils.errors import OVSSConfigError

EPS = torch.finfo(torch.float32).eps


def tol(n: int, k: float = 16.0) -> float:
    """Absolute tolerance of an n-term float32 reduction of O(1) terms."""
    return k * EPS * math.sqrt(n)


@pytest.fixture(autouse=True)
def _scope():
    init_default_scope('mmseg')
    torch.manual_seed(0)


# ------------------------------------------------------------ cost volume
@pytest.mark.parametrize('per_image', [False, True])
def test_cost_volume_is_the_cosine_of_every_patch_and_template(per_image):
    b, d, h, w, k, p = 2, 6, 3, 4, 5, 3
    patches = torch.randn(b, d, h, w)
    templates = torch.randn(b, k, p, d) if per_image else torch.randn(k, p, d)
    cost = cosine_cost_volume(patches, templates)
    assert cost.shape == (b, k, p, h, w)
    for bi in range(b):
        for c in range(k):
            for t in range(p):
                text = templates[bi, c, t] if per_image else templates[c, t]
                for i in range(h):
                    for j in range(w):
                        f = patches[bi, :, i, j]
                        want = float(f @ text) / float(f.norm() * text.norm())
                        assert abs(float(cost[bi, c, t, i, j]) - want) < \
                            tol(d)


def test_cost_embedding_is_one_conv_per_class_and_checks_templates():
    embed = CostEmbedding(in_channels=3, out_channels=4, kernel_size=3)
    cost = torch.randn(2, 5, 3, 6, 6)
    out = embed(cost)
    assert out.shape == (2, 5, 4, 6, 6)
    direct = F.conv2d(cost[1, 2:3], embed.conv.weight, embed.conv.bias,
                      padding=1)[0]
    torch.testing.assert_close(out[1, 2], direct, atol=tol(27), rtol=0)
    with pytest.raises(OVSSConfigError, match='num_templates'):
        embed(torch.randn(1, 2, 4, 6, 6))
    with pytest.raises(OVSSConfigError, match='odd'):
        CostEmbedding(3, 4, kernel_size=4)


# ------------------------------------------------------- class attention
def test_linear_attention_matches_the_kernel_formula_with_loops():
    n, length, heads, d = 2, 5, 2, 3
    q, k, v = (torch.randn(n, length, heads, d) for _ in range(3))
    out = linear_attention(q, k, v, eps=1e-6)
    phi = lambda x: F.elu(x) + 1  # noqa: E731
    for a in range(n):
        for h in range(heads):
            for i in range(length):
                num = torch.zeros(d)
                den = 0.0
                for j in range(length):
                    weight = float(phi(q[a, i, h]) @ phi(k[a, j, h]))
                    num += weight * v[a, j, h]
                    den += weight
                torch.testing.assert_close(out[a, i, h], num / (den + 1e-6),
                                           atol=tol(length * d, 64), rtol=0)


def _direct_class_layer(layer, x, guidance):
    """ClassAggregation at test time (no pooling) written out with the
    concatenated inputs of CAT-Seg's AttentionLayer, per position."""
    b, k, h, w, d = x.shape
    heads = layer.num_heads
    pad = layer.pad_len - k
    out = torch.empty_like(x)
    for bi in range(b):
        g = guidance[bi]
        if pad > 0:
            g = torch.cat([g, layer.padding_guidance[0].expand(pad, -1)])
        for i in range(h):
            for j in range(w):
                t = x[bi, :, i, j]
                if pad > 0:
                    t = torch.cat([t, layer.padding_tokens[0].expand(pad, -1)])
                n1 = layer.norm1(t)
                q = torch.cat([n1, g], -1) @ layer.q.weight.T + layer.q.bias
                kk = torch.cat([n1, g], -1) @ layer.k.weight.T + layer.k.bias
                v = n1 @ layer.v.weight.T + layer.v.bias
                att = linear_attention(*(z.view(1, -1, heads, d // heads)
                                         for z in (q, kk, v)))
                y = t + att.reshape(-1, d)
                y = y + layer.mlp(layer.norm2(y))
                # CAT-Seg adds the whole (pooled) layer output to the input
                out[bi, :, i, j] = x[bi, :, i, j] + y[:k]
    return out


@pytest.mark.parametrize('pad_len', [0, 7])
def test_class_aggregation_matches_the_concatenated_guidance_layer(pad_len):
    layer = ClassAggregation(embed_dims=8, guidance_dims=4, num_heads=2,
                             pad_len=pad_len).eval()
    if pad_len:
        torch.nn.init.normal_(layer.padding_tokens)
        torch.nn.init.normal_(layer.padding_guidance)
    x = torch.randn(2, 5, 3, 2, 8)
    guidance = torch.randn(2, 5, 4)
    out = layer(x, guidance)
    torch.testing.assert_close(out, _direct_class_layer(layer, x, guidance),
                               atol=tol(64, 64), rtol=0)


def test_class_aggregation_pools_in_training_and_resizes_back():
    layer = ClassAggregation(embed_dims=8, guidance_dims=0, num_heads=2,
                             pad_len=0, pool_size=2).train()
    x = torch.randn(1, 3, 4, 4, 8)
    out = layer(x, None)
    assert out.shape == x.shape
    # training: the layer runs on the 2x2-pooled map and its output (pooled
    # input included) is resized back and added; at test time (1x1
    # pooling) the same layer on the pooled map gives p + that output
    pooled = F.avg_pool2d(x[0].permute(0, 3, 1, 2), 2)  # (K, d, 2, 2)
    p = pooled.permute(0, 2, 3, 1).unsqueeze(0)
    branch = layer.eval()(p, None) - p  # (1, K, 2, 2, d)
    # bilinear upsampling with align_corners keeps the corners exactly
    for i, j in ((0, 0), (0, 3), (3, 0), (3, 3)):
        torch.testing.assert_close(
            out[0, :, i, j], x[0, :, i, j] + branch[0, :, i // 3, j // 3],
            atol=tol(64, 64), rtol=0)
    # and the centre of the map is the mean of the four pooled outputs
    centre = (out[0, :, 1:3, 1:3] - x[0, :, 1:3, 1:3])
    assert torch.allclose(centre.mean(dim=(1, 2)),
                          branch[0].mean(dim=(1, 2)), atol=tol(64, 64))


def test_class_aggregation_handles_any_class_count():
    layer = ClassAggregation(embed_dims=8, guidance_dims=4, num_heads=2,
                             pad_len=4).eval()
    for k in (1, 4, 9):
        out = layer(torch.randn(1, k, 2, 2, 8), torch.randn(1, k, 4))
        assert out.shape == (1, k, 2, 2, 8)
        assert torch.isfinite(out).all()


# --------------------------------------------------- spatial aggregation
def test_shift_mask_separates_the_regions_of_a_rolled_window():
    h = w = 4
    window, shift = 2, 1
    mask = window_region_mask(h, w, window, shift)
    assert mask.shape == (4, 4, 4)
    # regions of the rolled map, by hand: rows/cols [0, h-window),
    # [h-window, h-shift), [h-shift, h)
    def band(i):
        return 0 if i < h - window else (1 if i < h - shift else 2)
    for wi in range(4):
        r0, c0 = (wi // 2) * window, (wi % 2) * window
        cells = [(r0 + a, c0 + b) for a in range(window) for b in range(window)]
        for m, (ri, ci) in enumerate(cells):
            for n, (rj, cj) in enumerate(cells):
                same = (band(ri), band(ci)) == (band(rj), band(cj))
                assert float(mask[wi, m, n]) == (0.0 if same
                                                 else MASK_VALUE)


def catseg_attention(c, g, heads, window, shift):
    """The guided window attention in CAT-Seg's setting."""
    return GuidedShiftWindowMSA(c, g, heads, window, shift_size=shift,
                                position_bias=False, clamp_window=True,
                                mask_padding=False).eval()


def _direct_window_attention(attn, x, hw, guidance, k):
    """CAT-Seg's guided window attention written out: concat guidance,
    zero-pad q, k, v to whole windows, roll, attend inside each window with
    the region mask, per window by loops."""
    n, length, c = x.shape
    h, w = hw
    window, shift = attn.effective_window(h, w)
    hp, wp = -(-h // window) * window, -(-w // window) * window
    msa = attn.w_msa
    heads, dh = msa.num_heads, c // msa.num_heads
    g = guidance.repeat_interleave(k, dim=0)
    cat = torch.cat([x, g], -1)
    q = cat @ msa.q.weight.T + msa.q.bias
    kk = cat @ msa.k.weight.T + msa.k.bias
    v = x @ msa.v.weight.T + msa.v.bias

    def grid(t):
        padded = torch.zeros(n, hp, wp, c)
        padded[:, :h, :w] = t.view(n, h, w, c)
        return torch.roll(padded, (-shift, -shift), (1, 2))

    q, kk, v = grid(q), grid(kk), grid(v)

    def band(i, size):
        if not shift:
            return 0
        return 0 if i < size - window else (1 if i < size - shift else 2)
    out = torch.zeros(n, hp, wp, c)
    for a in range(n):
        for r0 in range(0, hp, window):
            for c0 in range(0, wp, window):
                cells = [(r0 + i, c0 + j) for i in range(window)
                         for j in range(window)]
                for head in range(heads):
                    sl = slice(head * dh, (head + 1) * dh)
                    qs = torch.stack([q[a, i, j, sl] for i, j in cells])
                    ks = torch.stack([kk[a, i, j, sl] for i, j in cells])
                    vs = torch.stack([v[a, i, j, sl] for i, j in cells])
                    logits = qs @ ks.T / math.sqrt(dh)
                    for m, (ri, ci) in enumerate(cells):
                        for o, (rj, cj) in enumerate(cells):
                            if (band(ri, hp), band(ci, wp)) != \
                                    (band(rj, hp), band(cj, wp)):
                                logits[m, o] += MASK_VALUE
                    res = logits.softmax(-1) @ vs
                    for m, (i, j) in enumerate(cells):
                        out[a, i, j, sl] = res[m]
    out = torch.roll(out, (shift, shift), (1, 2))[:, :h, :w]
    return out.reshape(n, length, c) @ msa.proj.weight.T + msa.proj.bias


@pytest.mark.parametrize('shift', [0, 1])
@pytest.mark.parametrize('hw', [(4, 4), (5, 3), (2, 5)])
def test_guided_window_attention_matches_the_concatenated_computation(
        shift, hw):
    """(4, 4): whole windows; (5, 3): padded to (6, 4), the zero tokens
    attended; (2, 5): no larger than the window, one unshifted window."""
    b, k, c, g = 2, 3, 8, 4
    h, w = hw
    attn = catseg_attention(c, g, 2, 2, shift)
    x = torch.randn(b * k, h * w, c)
    guidance = torch.randn(b, h * w, g)
    out = attn(x, (h, w), guidance)
    want = _direct_window_attention(attn, x, (h, w), guidance, k)
    torch.testing.assert_close(out, want, atol=tol(64, 64), rtol=0)


def test_window_no_larger_than_the_map_is_one_unshifted_window():
    attn = catseg_attention(8, 0, 2, 12, 6)
    assert attn.effective_window(3, 3) == (3, 0)
    assert attn.effective_window(12, 30) == (12, 0)
    assert attn.effective_window(24, 24) == (12, 6)
    out = attn(torch.randn(2, 9, 8), (3, 3))
    assert out.shape == (2, 9, 8)


def test_spatial_aggregation_is_catseg_swin_without_position_bias():
    spatial = SpatialAggregation(embed_dims=8, guidance_dims=4, num_heads=2,
                                 window_size=2)
    for block, shift in zip(spatial.blocks, (0, 1)):
        attn = block.attn
        assert (attn.shift_size, attn.clamp_window, attn.mask_padding) == (
            shift, True, False)
        assert not hasattr(attn.w_msa, 'relative_position_bias_table')
    assert not any('relative_position' in key for key in spatial.state_dict())


def test_spatial_aggregation_loads_checkpoints_with_flat_attention_keys():
    """Checkpoints of CAT-Seg's layout (``attn.q``, ``attn.proj``, ...)
    load into ``attn.w_msa.*`` and give the same output."""
    spatial = SpatialAggregation(embed_dims=8, guidance_dims=4, num_heads=2,
                                 window_size=2).eval()
    flat = {key.replace('.w_msa.', '.'): value
            for key, value in spatial.state_dict().items()}
    assert 'blocks.1.attn.q.weight' in flat
    fresh = SpatialAggregation(embed_dims=8, guidance_dims=4, num_heads=2,
                               window_size=2).eval()
    fresh.load_state_dict(flat, strict=True)
    x, g = torch.randn(2, 3, 4, 4, 8), torch.randn(2, 4, 4, 4)
    torch.testing.assert_close(fresh(x, g), spatial(x, g), rtol=0, atol=0)


def test_spatial_aggregation_shapes_and_guidance_checks():
    spatial = SpatialAggregation(embed_dims=8, guidance_dims=4, num_heads=2,
                                 window_size=2)
    x = torch.randn(2, 3, 4, 4, 8)
    out = spatial(x, torch.randn(2, 4, 4, 4))
    assert out.shape == x.shape
    with pytest.raises(OVSSConfigError, match='guidance'):
        spatial(x, None)
    with pytest.raises(OVSSConfigError, match='does not match'):
        spatial(x, torch.randn(2, 4, 3, 3))
    # each class is its own image: permuting classes permutes the output
    perm = torch.tensor([2, 0, 1])
    g = torch.randn(2, 4, 4, 4)
    torch.testing.assert_close(spatial(x[:, perm], g), spatial(x, g)[:, perm])


# ---------------------------------------------------------------- decoder
def test_upsampling_decoder_shapes_at_every_stage():
    decoder = UpsamplingDecoder(in_channels=32, guidance_in_channels=64,
                                channels=(32, 16), guidance_channels=(16, 8),
                                guidance_proj_channels=(8, 4))
    maps = [torch.randn(2, 64, 3, 3), torch.randn(2, 64, 3, 3)]
    guidance = decoder.prepare_guidance(maps)
    assert [tuple(g.shape) for g in guidance] == [(2, 8, 6, 6), (2, 4, 12, 12)]
    x = torch.randn(2, 5, 32, 3, 3)
    y = x.flatten(0, 1)
    shapes = []
    for stage, g in zip(decoder.stages, guidance):
        up = stage.up(y)
        shapes.append(tuple(up.shape))
        y = stage(y, g)
        shapes.append(tuple(y.shape))
    assert shapes == [(10, 24, 6, 6), (10, 32, 6, 6), (10, 28, 12, 12),
                      (10, 16, 12, 12)]
    logits = decoder(x, guidance)
    assert logits.shape == (2, 5, 12, 12) and decoder.scale == 4
    chunked = decoder.eval()(x, guidance, class_chunk_size=2)
    torch.testing.assert_close(chunked, decoder(x, guidance))
    with pytest.raises(OVSSConfigError, match='guidance layer'):
        decoder.prepare_guidance(maps[:1])


def test_decoder_stage_guidance_is_each_image_repeated_over_its_classes():
    decoder = UpsamplingDecoder(in_channels=32, guidance_in_channels=64,
                                channels=(16,), guidance_channels=(16,),
                                guidance_proj_channels=(8,)).eval()
    stage = decoder.stages[0]
    x = torch.randn(2 * 3, 32, 2, 2)
    g = torch.randn(2, 8, 4, 4)
    out = stage(x, g)
    # image 1, class 2 is row 5: its guidance is image 1's
    want = stage.convs(torch.cat([stage.up(x[5:6]), g[1:2]], dim=1))
    torch.testing.assert_close(out[5:6], want)


# ------------------------------------------------------------------- loss
@pytest.mark.parametrize('mode', ['negative', 'exclude'])
def test_pixel_bce_against_a_hand_computation(mode):
    logits = torch.randn(2, 3, 2, 2)
    labels = torch.tensor([[[0, 2], [255, 1]], [[1, 1], [2, 255]]])
    loss = PixelBCELoss(ignore_mode=mode, loss_weight=2.0)(
        logits, labels, ignore_index=255)
    total, count = 0.0, 0
    for b in range(2):
        for i in range(2):
            for j in range(2):
                ignored = int(labels[b, i, j]) == 255
                if ignored and mode == 'exclude':
                    continue
                for c in range(3):
                    y = 1.0 if int(labels[b, i, j]) == c else 0.0
                    p = 1 / (1 + math.exp(-float(logits[b, c, i, j])))
                    total += -(y * math.log(p) + (1 - y) * math.log(1 - p))
                    count += 1
    assert abs(float(loss) - 2.0 * total / count) < tol(count, 64)


def test_pixel_bce_gradient_is_sigmoid_minus_target():
    logits = torch.randn(1, 4, 3, 3, requires_grad=True)
    labels = torch.randint(0, 4, (1, 3, 3))
    pixel_bce_with_logits(logits, labels, 255).backward()
    target = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    want = (logits.detach().sigmoid() - target) / logits.numel()
    torch.testing.assert_close(logits.grad, want)


def test_pixel_bce_rejects_bad_settings():
    with pytest.raises(OVSSConfigError, match='ignore_mode'):
        PixelBCELoss(ignore_mode='drop')
    with pytest.raises(OVSSConfigError, match='loss_'):
        PixelBCELoss(loss_name='bce')
    with pytest.raises(OVSSConfigError, match='labels'):
        pixel_bce_with_logits(torch.randn(1, 2, 3, 3),
                              torch.zeros(1, 2, 2, dtype=torch.long), 255)


def test_components_are_registered():
    for name in ('CostEmbedding', 'SpatialAggregation', 'ClassAggregation',
                 'CostAggregator', 'UpsamplingDecoder', 'CATSegHead',
                 'PixelBCELoss', 'CostVolumeSegmentor'):
        assert MODELS.get(name) is not None, name
