"""Spatial Enhanced Decoder (DCP-CLIP Eqs. 13-16) and its guided Swin."""
import math

import pytest
import torch

from mmseg.models.backbones.swin import ShiftWindowMSA
from mmseg_ovss.models.blocks.guided_swin import (GuidedShiftWindowMSA,
                                                  GuidedWindowMSA,
                                                  relative_position_index,
                                                  window_region_mask)
from mmseg_ovss.models.dcpclip.spatial_enhanced_decoder import \
    SpatialEnhancedDecoder
from mmseg_ovss.utils.errors import OVSSConfigError

DTYPE = torch.float64
EPS = torch.finfo(DTYPE).eps


def tol(n):
    return 100 * EPS * math.sqrt(n)


def linear(layer, x):
    return x @ layer.weight.t() + layer.bias


def test_guided_window_attention_matches_eq_13_14():
    """q, k from [F ; G], v from F, plus Swin's relative position bias."""
    torch.manual_seed(0)
    dims, guide, heads, window = 8, 3, 2, 2
    msa = GuidedWindowMSA(dims, guide, heads, (window, window)).to(DTYPE)
    torch.nn.init.normal_(msa.relative_position_bias_table)
    x = torch.randn(3, window * window, dims + guide, dtype=DTYPE)
    q, k, v = msa.project(x[..., :dims], x[..., dims:])
    out = msa(q[None], k[None], v[None])[0]
    d = dims // heads
    for w in range(3):
        feats = x[w, :, :dims]
        q = linear(msa.q, x[w]) * d ** -0.5
        k, v = linear(msa.k, x[w]), linear(msa.v, feats)
        heads_out = []
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            rows = []
            for i in range(window * window):
                scores = []
                for j in range(window * window):
                    # relative offset of token j seen from token i
                    dy = i // window - j // window + window - 1
                    dx = i % window - j % window + window - 1
                    bias = msa.relative_position_bias_table[
                        dy * (2 * window - 1) + dx, h]
                    scores.append(torch.dot(q[i, sl], k[j, sl]) + bias)
                weights = torch.softmax(torch.stack(scores), 0)
                rows.append((weights[:, None] * v[:, sl]).sum(0))
            heads_out.append(torch.stack(rows))
        want = linear(msa.proj, torch.cat(heads_out, dim=1))
        assert torch.allclose(out[w], want, atol=tol(dims * 4))


@pytest.mark.parametrize('shift', [0, 2])
def test_without_guidance_it_is_mmseg_swin_attention(shift):
    torch.manual_seed(0)
    dims, heads, window = 8, 2, 4
    ours = GuidedShiftWindowMSA(dims, 0, heads, window, shift_size=shift)
    ref = ShiftWindowMSA(dims, heads, window, shift_size=shift)
    with torch.no_grad():
        q, k, v = ref.w_msa.qkv.weight.chunk(3)
        qb, kb, vb = ref.w_msa.qkv.bias.chunk(3)
        for layer, weight, bias in ((ours.w_msa.q, q, qb),
                                    (ours.w_msa.k, k, kb),
                                    (ours.w_msa.v, v, vb)):
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        ours.w_msa.proj.load_state_dict(ref.w_msa.proj.state_dict())
        torch.nn.init.normal_(ref.w_msa.relative_position_bias_table)
        ours.w_msa.relative_position_bias_table.copy_(
            ref.w_msa.relative_position_bias_table)
    x = torch.randn(2, 8 * 8, dims)
    eps = torch.finfo(torch.float32).eps
    assert torch.allclose(ours(x, (8, 8)), ref(x, (8, 8)),
                          atol=100 * eps * math.sqrt(dims * 16))


def test_padding_is_masked_out():
    # a 3 x 3 map in one 4 x 4 window: real tokens never see the padding
    mask = window_region_mask(3, 3, 4, 0)
    assert mask.shape == (1, 16, 16)
    real = [y * 4 + x for y in range(3) for x in range(3)]
    pad = [i for i in range(16) if i not in real]
    assert (mask[0][real][:, real] == 0).all()
    assert (mask[0][real][:, pad] < 0).all()
    assert window_region_mask(8, 8, 4, 0) is None
    torch.manual_seed(0)
    msa = GuidedShiftWindowMSA(8, 2, 2, 4)
    x, g = torch.randn(1, 9, 8), torch.randn(1, 9, 2)
    out = msa(x, (3, 3), g)
    # equals attention among the 9 real tokens (with their position bias)
    w = msa.w_msa
    windowed = torch.zeros(1, 16, 10)
    windowed[0, real] = torch.cat([x, g], -1)[0]
    bias = w.position_bias()[:, real][:, :, real]
    q = w.q(windowed[0, real]).view(9, 2, 4).transpose(0, 1) * w.scale
    k = w.k(windowed[0, real]).view(9, 2, 4).transpose(0, 1)
    v = w.v(windowed[0, real, :8]).view(9, 2, 4).transpose(0, 1)
    attn = torch.softmax(q @ k.transpose(1, 2) + bias, -1)
    want = w.proj((attn @ v).transpose(0, 1).reshape(9, 8))
    eps = torch.finfo(torch.float32).eps
    assert torch.allclose(out[0], want, atol=100 * eps * math.sqrt(32))


def test_guidance_is_shared_by_the_classes_of_an_image():
    """(B, L, G) guidance for B * K maps equals it repeated per class."""
    torch.manual_seed(0)
    msa = GuidedShiftWindowMSA(8, 3, 2, 4, shift_size=2).to(DTYPE)
    x = torch.randn(2 * 3, 7 * 6, 8, dtype=DTYPE)
    g = torch.randn(2, 7 * 6, 3, dtype=DTYPE)
    repeated = g.repeat_interleave(3, dim=0)
    assert torch.allclose(msa(x, (7, 6), g), msa(x, (7, 6), repeated),
                          atol=tol(8 * 16))
    with pytest.raises(OVSSConfigError, match='does not fit'):
        msa(x, (7, 6), g[:, :-1])
    with pytest.raises(OVSSConfigError, match='guidance'):
        msa(x, (7, 6), None)


def test_position_bias_of_a_smaller_window_is_its_part_of_the_table():
    """A clamped window reads the offsets it has from the full table: the
    bias among the tokens of a 3 x 3 corner of a 4 x 4 window."""
    torch.manual_seed(0)
    msa = GuidedWindowMSA(8, 0, 2, 4)
    torch.nn.init.normal_(msa.relative_position_bias_table)
    assert torch.equal(relative_position_index(4, 4),
                       msa.relative_position_index)
    corner = [y * 4 + x for y in range(3) for x in range(3)]
    full = msa.position_bias()
    assert torch.equal(msa.position_bias(3),
                       full[:, corner][:, :, corner])
    assert GuidedWindowMSA(8, 0, 2, 4, position_bias=False).position_bias(
    ) is None


def make_decoder(**kwargs):
    cfg = dict(in_channels=16, cost_channels=5, encoder_channels=(12, 10, 6),
               encoder_upsample_channels=(0, 0, 0), encoder_dims=(8, 4, 4),
               attention_channels=2,
               decoder_channels=(8, 8), num_layers=2, window_size=4,
               num_heads=2)
    cfg.update(kwargs)
    return SpatialEnhancedDecoder(**cfg)


def decoder_inputs(batch=2, classes=3, size=4):
    torch.manual_seed(0)
    cost_feature = torch.randn(batch, classes, 16, size, size)
    cost_volume = torch.randn(batch, classes, 5, size, size)
    encoder = [torch.randn(batch, c, size * 2 ** i, size * 2 ** i)
               for i, c in enumerate((12, 10, 6))]
    attention = torch.rand(batch, 2, size, size)
    return cost_feature, cost_volume, encoder, attention


@pytest.mark.parametrize('layers', [0, 1, 2])
def test_shapes_at_every_stage(layers):
    decoder = make_decoder(num_layers=layers)
    stages = []
    out = decoder(*decoder_inputs(), stages=stages)
    widths = [16, 8, 8]
    assert [tuple(s.shape) for s in stages] == [
        (2, 3, widths[i], 4 * 2 ** i, 4 * 2 ** i) for i in range(layers + 1)]
    assert out.shape == (2, 3, 4 * 2 ** layers, 4 * 2 ** layers)
    assert decoder.output_stride == 2 ** layers
    # spatial enhancement before every upsampling layer (base level alone
    # without upsampling layers)
    assert sorted(decoder.enhance) == [str(i) for i in range(max(layers, 1))]


def test_encoder_maps_upsampled_by_transposed_convs():
    """CAT-Seg-style guidance: every level's map given at the feature
    resolution, levels 1, 2 upsampled x2, x4 by transposed convs."""
    decoder = make_decoder(encoder_upsample_channels=(0, 6, 5))
    assert decoder.encoder_up[1].stride == (2, 2)
    assert decoder.encoder_up[2].stride == (4, 4)
    feature, volume, encoder, attention = decoder_inputs()
    base = [torch.randn(2, c, 4, 4) for c in (12, 10, 6)]
    projected = decoder.project_encoder(base)
    assert [tuple(p.shape) for p in projected] == [
        (2, 8, 4, 4), (2, 4, 8, 8), (2, 4, 16, 16)]
    out = decoder(feature, volume, base, attention)
    assert out.shape == (2, 3, 16, 16)


def test_fusion_switches_table_vi():
    full = make_decoder()
    assert full.fuse[0][0].in_channels == 8 + 5 + 4
    assert full.enhance['0'].blocks[0].attn.w_msa.guidance_dims == 8 + 2
    no_cost = make_decoder(fuse_cost=False)
    assert no_cost.fuse[0][0].in_channels == 8 + 4
    no_encoder = make_decoder(fuse_encoder=False)
    assert no_encoder.fuse[0][0].in_channels == 8 + 5
    assert no_encoder.enhance['0'].blocks[0].attn.w_msa.guidance_dims == 2
    no_attention = make_decoder(fuse_attention=False)
    assert no_attention.enhance['0'].blocks[0].attn.w_msa.guidance_dims == 8
    mean_cost = make_decoder(cost_skip='mean')
    assert mean_cost.fuse[0][0].in_channels == 8 + 1 + 4
    no_swin = make_decoder(swin=False)
    assert len(no_swin.enhance) == 0
    # level 0's encoder map only fed the spatial enhancement
    assert no_swin.encoder_used == [False, True, True]
    for decoder in (no_cost, no_encoder, no_attention, mean_cost, no_swin):
        out = decoder(*decoder_inputs())
        assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


def test_classes_are_independent():
    """Each class is decoded from its own cost slices (classes folded into
    the batch): dropping a class does not change the others."""
    decoder = make_decoder().eval()
    feature, volume, encoder, attention = decoder_inputs()
    out = decoder(feature, volume, encoder, attention)
    part = decoder(feature[:, :2], volume[:, :2], encoder, attention)
    eps = torch.finfo(torch.float32).eps
    assert torch.allclose(out[:, :2], part, atol=1000 * eps)
    chunked = decoder(feature, volume, encoder, attention,
                      class_chunk_size=2)
    assert torch.allclose(out, chunked, atol=1000 * eps)


def test_missing_inputs_are_named():
    decoder = make_decoder()
    feature, volume, encoder, _ = decoder_inputs()
    with pytest.raises(OVSSConfigError, match='attention'):
        decoder(feature, volume, encoder, None)
    with pytest.raises(OVSSConfigError, match='encoder_channels'):
        decoder(feature, volume, [encoder[1], *encoder[1:]], _)
    with pytest.raises(OVSSConfigError, match='one per level'):
        decoder(feature, volume, encoder[:1], None)
    with pytest.raises(OVSSConfigError, match='num_layers'):
        make_decoder(num_layers=5)
    with pytest.raises(OVSSConfigError, match='attention_channels'):
        make_decoder(attention_channels=0)
    assert not make_decoder(attention_channels=0,
                            fuse_attention=False).fuse_attention
