"""Each dense strategy against a direct computation of its formula.

Tiny random open_clip ViT (``ovss-tiny-ViT-16``: 6 blocks, width 64,
4 heads); references below are written from the papers' equations with the
block's raw weights, independently of ``mmseg_ovss.clip.attention``.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mmseg_ovss.clip.strategies import build_dense_strategy
from mmseg_ovss.clip.vision_encoder import interpolate_position_embedding
from mmseg_ovss.models.backbones import OpenCLIPViT
from mmseg_ovss.testing.direct import (EPS32, assert_fp32_close,
                                      attention_heads, merge_heads)
from mmseg_ovss.testing.tiny_clip import build_tiny_clip
from mmseg_ovss.utils.errors import OVSSConfigError

# Reductions chained from a block's input to the projected dense output:
# in_proj, the attention scores, attention x v, out_proj, ln_post and proj,
# each of at most width 64 terms on the tiny ViT.
LAST_BLOCK_TERMS = 6 * 64


@pytest.fixture(scope='module')
def clip_model():
    return build_tiny_clip('ovss-tiny-ViT-16', seed=0)


@pytest.fixture(scope='module')
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64)  # the model's native 4x4 grid


def sm(a, b):
    return (a @ b.transpose(-1, -2) / math.sqrt(a.shape[-1])).softmax(-1)


def stream_inputs(model, images):
    """Inputs of every block on the unmodified stream (native size)."""
    visual = model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = visual.ln_pre(torch.cat([cls, x], 1) + visual.positional_embedding)
    inputs = []
    for block in visual.transformer.resblocks:
        inputs.append(x)
        x = block(x)
    return inputs, x


def to_dense(model, tokens):
    y = model.visual.ln_post(tokens[:, 1:]) @ model.visual.proj
    return y.transpose(1, 2).reshape(y.shape[0], -1, 4, 4)


def backbone_over(model, strategy='Vanilla', **kwargs):
    """An OpenCLIPViT over ``model``'s image tower (weights not copied)."""
    return OpenCLIPViT(visual=model.visual, dense_strategy=strategy,
                       **kwargs).eval()


def run(model, strategy, images, **kwargs):
    with torch.no_grad():
        return backbone_over(model, strategy).forward_dense(images, **kwargs)


def last_block(model):
    return model.visual.transformer.resblocks[-1]


@torch.no_grad()
def test_vanilla_equals_open_clip_tokens_and_cls(clip_model, images):
    feats = run(clip_model, 'Vanilla', images, with_cls=True)
    clip_model.visual.output_tokens = True
    try:
        pooled, tokens = clip_model.visual(images)
    finally:
        clip_model.visual.output_tokens = False
    dense = (tokens @ clip_model.visual.proj).transpose(1, 2).reshape(
        2, -1, 4, 4)
    # open_clip's fused attention kernel in all 6 blocks
    terms = 6 * LAST_BLOCK_TERMS
    assert_fp32_close(feats.patch_tokens, dense, terms)
    assert_fp32_close(feats.cls_token, pooled, terms)
    assert_fp32_close(feats.encode_image(images),
                      clip_model.encode_image(images), terms)


@torch.no_grad()
def test_maskclip_official_and_freecp_variant(clip_model, images):
    inputs, _ = stream_inputs(clip_model, images)
    block, x = last_block(clip_model), inputs[-1]
    _, _, v = attention_heads(block, block.ln_1(x))
    y = merge_heads(block, v)
    assert_fp32_close(
        run(clip_model, dict(type='MaskCLIP'), images).patch_tokens,
        to_dense(clip_model, y), LAST_BLOCK_TERMS)
    y_ffn = y + block.mlp(block.ln_2(y))
    # the FFN adds ln_2 and two linears (hidden width 256)
    assert_fp32_close(
        run(clip_model, dict(type='MaskCLIP', ffn=True), images).patch_tokens,
        to_dense(clip_model, y_ffn), LAST_BLOCK_TERMS + 64 + 64 + 256)


@torch.no_grad()
def test_sclip_official_and_freecp_variant(clip_model, images):
    inputs, _ = stream_inputs(clip_model, images)
    block, x = last_block(clip_model), inputs[-1]
    q, k, v = attention_heads(block, block.ln_1(x))
    weights = sm(q, q) + sm(k, k)
    # two softmax rows of 17 terms each
    assert_fp32_close(weights.sum(-1), torch.full(weights.shape[:-1], 2.0),
                      2 * 17)
    attn = merge_heads(block, weights @ v)
    official = x + attn
    official = official + block.mlp(block.ln_2(official))
    ffn_terms = LAST_BLOCK_TERMS + 64 + 64 + 256
    assert_fp32_close(run(clip_model, 'SCLIP', images).patch_tokens,
                      to_dense(clip_model, official), ffn_terms)
    freecp = attn + block.mlp(block.ln_2(attn))
    assert_fp32_close(
        run(clip_model, dict(type='SCLIP', residual=False), images
            ).patch_tokens, to_dense(clip_model, freecp), ffn_terms)


@torch.no_grad()
def test_clearclip(clip_model, images):
    inputs, _ = stream_inputs(clip_model, images)
    block, x = last_block(clip_model), inputs[-1]
    q, _, v = attention_heads(block, block.ln_1(x))
    expected = to_dense(clip_model, merge_heads(block, sm(q, q) @ v))
    assert_fp32_close(run(clip_model, 'ClearCLIP', images).patch_tokens,
                      expected, LAST_BLOCK_TERMS)


@torch.no_grad()
def test_naclip_gaussian_neighbourhood(clip_model):
    torch.manual_seed(2)
    images = torch.randn(1, 3, 48, 80)  # 3 x 5 grid, interpolated positions
    sigma = 1.5
    x, layout = backbone_over(clip_model).embed(images)
    grid = layout.grid
    for block in clip_model.visual.transformer.resblocks[:-1]:
        x = block(x)
    block = last_block(clip_model)
    _, k, v = attention_heads(block, block.ln_1(x))
    n = grid[0] * grid[1]
    omega = torch.zeros(n + 1, n + 1)
    for i in range(n):
        for j in range(n):
            (ri, ci), (rj, cj) = divmod(i, grid[1]), divmod(j, grid[1])
            omega[i + 1, j + 1] = math.exp(
                -((ri - rj) ** 2 + (ci - cj) ** 2) / (2 * sigma ** 2))
    logits = k @ k.transpose(-1, -2) / math.sqrt(k.shape[-1]) + omega
    y = merge_heads(block, logits.softmax(-1) @ v)
    y = clip_model.visual.ln_post(y[:, 1:]) @ clip_model.visual.proj
    expected = y.transpose(1, 2).reshape(1, -1, *grid)
    got = run(clip_model, dict(type='NACLIP', sigma=sigma), images)
    assert_fp32_close(got.patch_tokens, expected, LAST_BLOCK_TERMS)


@torch.no_grad()
def test_gem_self_self_attention_path(clip_model, images):
    inputs, _ = stream_inputs(clip_model, images)
    blocks = clip_model.visual.transformer.resblocks
    depth = 3
    path = inputs[-depth]
    for block, x in zip(blocks[-depth:], inputs[-depth:]):
        h = block.ln_1(x)
        q, k, v = attention_heads(block, h)
        t = h.norm(dim=-1).mean(-1).view(-1, 1, 1, 1) / math.sqrt(q.shape[-1])
        outs = []
        for z in (v, k, q):
            z = F.normalize(z, dim=-1)  # one extra iteration
            z = ((z @ z.transpose(-1, -2)) * t).softmax(-1) @ z
            z = F.normalize(z, dim=-1)
            outs.append(((z @ z.transpose(-1, -2)) * t).softmax(-1) @ v)
        path = path + merge_heads(block, (outs[0] + outs[1] + outs[2]) / 3)
    got = run(clip_model, dict(type='GEM', num_blocks=depth), images)
    # per block: three self-self attentions with one refinement each
    assert_fp32_close(got.patch_tokens, to_dense(clip_model, path),
                      depth * 2 * LAST_BLOCK_TERMS)


@torch.no_grad()
def test_attention_capture_is_vanilla_softmax(clip_model, images):
    inputs, _ = stream_inputs(clip_model, images)
    feats = run(clip_model, 'SCLIP', images, attention_layers=[0, 2, 5])
    assert sorted(feats.attn_weights) == [0, 2, 5]
    for layer in (0, 2, 5):
        block = clip_model.visual.transformer.resblocks[layer]
        q, k, _ = attention_heads(block, block.ln_1(inputs[layer]))
        # in_proj (64 terms), q k^T (16), softmax row (17)
        assert_fp32_close(feats.attn_weights[layer], sm(q, k), 64 + 16 + 17)


@torch.no_grad()
def test_attention_capture_head_mean_and_single_head(clip_model, images):
    full = run(clip_model, 'SCLIP', images, attention_layers=[0, 5])
    mean = run(clip_model, 'SCLIP', images, attention_layers=[0, 5],
               attention_heads='mean')
    one = run(clip_model, 'SCLIP', images, attention_layers=[0, 5],
              attention_heads=-1)
    assert (full.attn_heads, mean.attn_heads, one.attn_heads) == \
        (None, 'mean', -1)
    for layer in (0, 5):
        assert mean.attn_weights[layer].shape == (2, 1, 17, 17)
        weights = full.attn_weights[layer]
        by_hand = (weights[:, 0] + weights[:, 1] + weights[:, 2] +
                   weights[:, 3]).unsqueeze(1) / 4
        assert_fp32_close(mean.attn_weights[layer], by_hand, 4)
        assert one.attn_weights[layer].equal(weights[:, 3:])
    assert mean.patch_tokens.equal(full.patch_tokens)
    for bad in (4, 'max', True):
        with pytest.raises(OVSSConfigError, match='attention_heads'):
            run(clip_model, 'SCLIP', images, attention_layers=[0],
                attention_heads=bad)


def test_position_embedding_interpolation(clip_model):
    pos = clip_model.visual.positional_embedding
    assert interpolate_position_embedding(pos, (4, 4), (4, 4)) is pos
    out = interpolate_position_embedding(pos, (4, 4), (3, 7))
    assert out.shape == (1 + 21, pos.shape[1])
    torch.testing.assert_close(out[0], pos[0])
    constant = torch.ones_like(pos)
    torch.testing.assert_close(
        interpolate_position_embedding(constant, (4, 4), (6, 2)),
        torch.ones(13, pos.shape[1]))


def test_unknown_strategy_and_bad_depth(clip_model):
    with pytest.raises(OVSSConfigError, match='unknown dense strategy'):
        build_dense_strategy(dict(type='NoSuchCLIP'))
    with pytest.raises(OVSSConfigError, match='replaces 8 blocks'):
        backbone_over(clip_model, dict(type='GEM', num_blocks=8))


CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
NET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
NET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def proxyclip_with_input_capture(vfm_model):
    """A ProxyCLIP strategy and the list its VFM's patch-embedding inputs
    are appended to."""
    # seed=None: the random VFM is drawn from the global RNG, which the
    # tests seed (torch.manual_seed) before building it
    strategy = build_dense_strategy(dict(
        type='ProxyCLIP', random_init=True, vfm_model=vfm_model, seed=None))
    seen = []
    strategy.vfm.patch_embed.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].clone()))
    return strategy, seen


def proxy_output(clip_model, images, weights, vfm_grid):
    """out_proj(W v) of the last block, v bilinearly resized from CLIP's
    grid to the VFM's, then ln_post and proj: (B, D, h', w')."""
    x, layout = backbone_over(clip_model).embed(images)
    grid = layout.grid
    for block in clip_model.visual.transformer.resblocks[:-1]:
        x = block(x)
    block = last_block(clip_model)
    _, _, v = attention_heads(block, block.ln_1(x))
    b, h, _, d = v.shape
    v = F.interpolate(
        v[:, :, 1:].reshape(b * h, *grid, d).permute(0, 3, 1, 2),
        size=vfm_grid, mode='bilinear', align_corners=False)
    v = v.permute(0, 2, 3, 1).reshape(b, h, -1, d)
    y = clip_model.visual.ln_post(merge_heads(block, weights.unsqueeze(1) @ v))
    y = y @ clip_model.visual.proj
    return y.transpose(1, 2).reshape(b, -1, *vfm_grid)


@torch.no_grad()
def test_proxyclip_proxy_attention(clip_model):
    torch.manual_seed(5)
    images = torch.randn(1, 3, 32, 32)  # CLIP grid 2 x 2, DINO's 4 x 4
    strategy, seen = proxyclip_with_input_capture('vit_small_patch8_224')
    got = backbone_over(clip_model, strategy).forward_dense(images)
    # the VFM gets CLIP-normalised pixels renormalised to ImageNet's
    # statistics (a product, a sum, a difference and a quotient per value)
    net = (images * CLIP_STD + CLIP_MEAN - NET_MEAN) / NET_STD
    assert_fp32_close(seen[0], net, 4)
    feats = F.normalize(strategy.vfm.forward_features(seen[0])[:, 1:],
                        dim=-1)
    sim = feats @ feats.transpose(1, 2)
    logits = (sim - 1.2 * sim.mean(dim=(1, 2), keepdim=True)) * 3.0
    # masking is discontinuous at 0: no logit may lie within the rounding
    # of 384-term cosines and their 256-term mean (x 3 x 1.2) of zero
    band = 3 * 1.2 * (384 + 256) * EPS32
    assert logits.abs().min() > 10 * band
    logits[logits < 0] = float('-inf')
    expected = proxy_output(clip_model, images, logits.softmax(-1), (4, 4))
    assert_fp32_close(got.patch_tokens, expected,
                      384 + 256 + LAST_BLOCK_TERMS)


def test_proxyclip_needs_local_weights(tmp_path):
    from mmseg_ovss.utils.errors import OVSSWeightsError
    with pytest.raises(OVSSWeightsError, match='vfm_checkpoint'):
        build_dense_strategy(dict(type='ProxyCLIP'))
    with pytest.raises(OVSSWeightsError, match='not found'):
        build_dense_strategy(dict(type='ProxyCLIP',
                                  vfm_checkpoint=str(tmp_path / 'dino.pth')))


def test_position_embedding_modes_match_direct_interpolate(clip_model):
    """'size', 'size_antialias' (GEM) and 'dino' (SCLIP lineage) resizes."""
    pos = clip_model.visual.positional_embedding
    grid = pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    dst = (3, 7)
    direct = {
        'size': F.interpolate(grid, size=dst, mode='bicubic',
                              align_corners=False),
        'size_antialias': F.interpolate(grid, size=dst, mode='bicubic',
                                        align_corners=False, antialias=True),
        'dino': F.interpolate(grid, scale_factor=(3.1 / 4, 7.1 / 4),
                              mode='bicubic', align_corners=False),
    }
    for mode, expected in direct.items():
        out = interpolate_position_embedding(pos, (4, 4), dst, mode)
        torch.testing.assert_close(out[0], pos[0])
        torch.testing.assert_close(
            out[1:], expected.permute(0, 2, 3, 1).reshape(21, -1))
    # the three really differ (so the option matters)
    assert not torch.allclose(direct['size'], direct['dino'])
    assert not torch.allclose(direct['size'], direct['size_antialias'])
    with pytest.raises(OVSSConfigError, match='interpolation'):
        interpolate_position_embedding(pos, (4, 4), dst, 'nearest')
    with pytest.raises(OVSSConfigError, match='pos_interp'):
        backbone_over(clip_model, pos_interp='bilinear')


@torch.no_grad()
def test_backbone_embeds_with_configured_pos_interp(clip_model):
    torch.manual_seed(3)
    images = torch.randn(1, 3, 48, 80)  # 3 x 5 grid
    visual = clip_model.visual
    grid = visual.positional_embedding[1:].reshape(1, 4, 4, -1).permute(
        0, 3, 1, 2)
    pos = F.interpolate(grid, scale_factor=(3.1 / 4, 5.1 / 4),
                        mode='bicubic', align_corners=False)
    pos = torch.cat([visual.positional_embedding[:1],
                     pos.permute(0, 2, 3, 1).reshape(15, -1)])
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1)
    expected = visual.ln_pre(torch.cat([cls, x], 1) + pos)
    got, layout = backbone_over(clip_model, pos_interp='dino').embed(images)
    assert layout.grid == (3, 5)
    assert (layout.num_prefix, layout.num_suffix) == (0, 0)
    torch.testing.assert_close(got, expected)
    plain, _ = backbone_over(clip_model).embed(images)
    assert not torch.allclose(plain, expected)


@torch.no_grad()
def test_gem_skips_the_unused_last_block(clip_model, images):
    """With several replaced blocks the last block runs only for the CLS
    token or its attention; the dense output does not change."""
    calls = []
    last = last_block(clip_model)
    # the block is written out from its modules (its MLP too, see
    # mlp_forward): the norm before the MLP marks a full run
    handle = last.ln_2.register_forward_hook(lambda *args: calls.append(1))
    try:
        strategy = dict(type='GEM', num_blocks=3)
        plain = run(clip_model, strategy, images)
        assert calls == []
        with_cls = run(clip_model, strategy, images, with_cls=True)
        assert calls == [1]
        with_attn = run(clip_model, strategy, images, attention_layers=[5])
    finally:
        handle.remove()
    torch.testing.assert_close(plain.patch_tokens, with_cls.patch_tokens)
    torch.testing.assert_close(plain.patch_tokens, with_attn.patch_tokens)
    assert sorted(with_attn.attn_weights) == [5]
    _, final = stream_inputs(clip_model, images)
    expected_cls = clip_model.visual.ln_post(final[:, 0]) @ \
        clip_model.visual.proj
    torch.testing.assert_close(with_cls.cls_token, expected_cls)


def test_proxy_attention_uniform_window_is_finite():
    """A constant window makes every S' negative: no NaN, self-attention."""
    from mmseg_ovss.clip.strategies.proxyclip import proxy_attention
    features = torch.ones(2, 8, 6)
    weights = proxy_attention(features, beta=1.2, gamma=3.0)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights, torch.eye(6).expand(2, 6, 6))
    # rows with a positive entry are unchanged by keeping the diagonal
    torch.manual_seed(4)
    features = torch.randn(1, 8, 10)
    feats = F.normalize(features, dim=1)
    sim = feats.transpose(1, 2) @ feats
    logits = (sim - 1.2 * sim.mean()) * 3.0
    # masking is discontinuous at 0: no logit within the rounding of
    # 8-term cosines and their 100-term mean (x 3 x 1.2) of zero
    assert logits.abs().min() > 10 * 3 * 1.2 * (8 + 100) * EPS32
    logits[logits < 0] = float('-inf')
    rows = torch.isfinite(logits).any(-1)[0]
    # cosines of 8 features, scaled, a softmax row of 10
    assert_fp32_close(proxy_attention(features, 1.2, 3.0)[0, rows],
                      logits.softmax(-1)[0, rows], 8 + 10)


@torch.no_grad()
def test_proxyclip_constant_window_attends_to_itself(clip_model, images):
    """A constant window through a VFM without position embeddings gives
    identical patch features: every S' is negative, each token attends to
    itself only (W = I), and the output is finite."""
    strategy, _ = proxyclip_with_input_capture('vit_small_patch8_224')
    strategy.vfm.pos_embed.zero_()
    constant = torch.zeros_like(images[:1])
    got = backbone_over(clip_model, strategy).forward_dense(constant)
    assert got.patch_tokens.shape[-2:] == (8, 8)
    assert torch.isfinite(got.patch_tokens).all()
    expected = proxy_output(clip_model, constant, torch.eye(64)[None], (8, 8))
    assert_fp32_close(got.patch_tokens, expected, LAST_BLOCK_TERMS)


def test_proxyclip_random_init_ignores_configured_checkpoint(tmp_path):
    strategy = build_dense_strategy(dict(
        type='ProxyCLIP', random_init=True,
        vfm_checkpoint=str(tmp_path / 'missing_dino.pth'),
        vfm_model='vit_tiny_patch16_224'))
    assert strategy.vfm is not None


@torch.no_grad()
def test_patch_size_follows_the_output_grid(clip_model, images):
    """ProxyCLIP tokens sit on the VFM's 8-px grid, the others on CLIP's."""
    assert run(clip_model, 'ClearCLIP', images).patch_size == 16
    strategy = build_dense_strategy(dict(
        type='ProxyCLIP', random_init=True, vfm_model='vit_small_patch8_224'))
    feats = backbone_over(clip_model, strategy).forward_dense(images)
    assert feats.patch_tokens.shape[-2:] == (8, 8)
    assert feats.patch_size == 8


@torch.no_grad()
@pytest.mark.parametrize('heads_kept', [None, 'mean', 2])
def test_attention_capture_in_window_blocks(clip_model, images, monkeypatch,
                                            heads_kept):
    """On the CPU the scores are formed a few windows at a time (cache
    blocking); one window per block gives the batched result."""
    import mmseg_ovss.clip.attention as attention
    batch = torch.cat([images, images.flip(-1), images * 0.5])
    whole = run(clip_model, 'SCLIP', batch, attention_layers=[0, 3],
                attention_heads=heads_kept)
    monkeypatch.setattr(attention, 'CPU_SCORE_ELEMENTS', 1)
    assert attention.score_batch_size(torch.zeros(6, 4, 17, 16)) == 1
    blocked = run(clip_model, 'SCLIP', batch, attention_layers=[0, 3],
                  attention_heads=heads_kept)
    # another batch size may change the kernels' summation order
    assert_fp32_close(blocked.patch_tokens, whole.patch_tokens,
                      6 * LAST_BLOCK_TERMS)
    for layer in (0, 3):
        assert_fp32_close(blocked.attn_weights[layer],
                          whole.attn_weights[layer], 64 + 16 + 17)


@torch.no_grad()
def test_cls_only_last_block_equals_the_full_block(clip_model, images):
    from mmseg_ovss.clip.attention import cls_block_forward
    inputs, _ = stream_inputs(clip_model, images)
    block = last_block(clip_model)
    # one block: attention (in_proj, scores, values, out_proj) and the FFN
    assert_fp32_close(cls_block_forward(block, inputs[-1]),
                      block(inputs[-1])[:, :1], LAST_BLOCK_TERMS + 384)


@torch.no_grad()
def test_encode_cls_in_another_dtype_uses_a_cast_copy():
    model = build_tiny_clip('ovss-tiny-ViT-16', seed=0)
    backbone = backbone_over(model, 'SCLIP')
    crops = torch.randn(5, 3, 64, 64)  # native size, as open_clip needs
    exact = backbone.encode_cls(crops)
    assert_fp32_close(exact, model.encode_image(crops), 6 * LAST_BLOCK_TERMS)
    assert backbone.encode_cls(crops, dtype=torch.float32).equal(exact)
    half = backbone.encode_cls(crops, dtype=torch.bfloat16)
    assert half.dtype == torch.float32 and half.shape == exact.shape
    # each of the 6 blocks rounds to bf16 about 4 times (ln, attention, two
    # linears): relative error r <= 24 eps_bf16, 1 - cos <= r^2 / 2
    rel = 24 * torch.finfo(torch.bfloat16).eps
    assert F.cosine_similarity(half, exact).min() > 1 - rel ** 2 / 2
    copy = backbone.cast_copy(torch.bfloat16, crops.device)
    assert copy is backbone.cast_copy(torch.bfloat16, crops.device)
    assert copy.dtype == torch.bfloat16 and backbone.dtype == torch.float32
    # the copy is not part of the model: no parameters, no checkpoint keys
    names = set(backbone.state_dict())
    assert not any('cast' in name for name in names)
    assert sum(p.numel() for p in backbone.parameters()) == \
        sum(p.numel() for p in model.visual.parameters())
    # new weights (a loaded checkpoint) rebuild the copy
    state = {k: v * 0.5 for k, v in model.visual.state_dict().items()}
    model.visual.load_state_dict(state)
    rebuilt = backbone.cast_copy(torch.bfloat16, crops.device)
    assert rebuilt is not copy
    torch.testing.assert_close(rebuilt.visual.proj.float(),
                               model.visual.proj.to(torch.bfloat16).float())
