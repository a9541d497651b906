"""OpenCLIPViT and DeepVisualPrompts against direct computations.

Tiny random open_clip ViT (``ovss-tiny-ViT-16``: 6 blocks, width 64, 4 heads,
patch 16, pretraining grid 4 x 4). The references below are written from
open_clip's own modules (``visual.conv1``, ``ln_pre``, each block's
``ln_1`` / ``attn`` weights / ``mlp`` ..., ``ln_post``, ``proj``), not from
the package's attention helpers.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from mmseg_ovss.clip.loading import build_clip_model
from mmseg_ovss.clip.tokens import TokenLayout, additive_mask
from mmseg_ovss.models.backbones import DeepVisualPrompts, OpenCLIPViT
from mmseg_ovss.testing.direct import (assert_fp32_close, attention_heads,
                                      merge_heads)
from mmseg_ovss.utils.errors import OVSSConfigError

TINY = 'ovss-tiny-ViT-16'
WIDTH, HEADS, LAYERS = 64, 4, 6
# Reductions chained through one block (ln_1, in_proj, scores, attention x
# v, out_proj, ln_2, c_fc, c_proj: at most 4 * 64 terms each); a stream of
# all six blocks and ln_post / proj on top.
BLOCK_TERMS = 8 * 4 * WIDTH
STREAM_TERMS = (LAYERS + 1) * BLOCK_TERMS


def build(**kwargs):
    kwargs.setdefault('model_name', TINY)
    kwargs.setdefault('random_init', True)
    return OpenCLIPViT(**kwargs)


@pytest.fixture(scope='module')
def backbone():
    return build().eval()


@pytest.fixture(scope='module')
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64)  # the pretraining 4 x 4 grid


def direct_embed(visual, images, prefix=None, suffix=None):
    """conv1, CLS, position embeddings (pretraining grid), extra tokens
    without position embedding, ln_pre over all (open_clip _embeds)."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    b = x.shape[0]
    parts = [x[:, :1]]
    if prefix is not None:
        parts.append(prefix.expand(b, -1, -1))
    parts.append(x[:, 1:])
    if suffix is not None:
        parts.append(suffix.expand(b, -1, -1))
    return visual.ln_pre(torch.cat(parts, dim=1))


def direct_block(block, x, mask=None):
    """A pre-norm block with an additive mask on q k^T / sqrt(d)
    (CLIP-RC Eq. 2), from the block's weights."""
    q, k, v = attention_heads(block, block.ln_1(x))
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits + mask
    x = x + block.ls_1(merge_heads(block, logits.softmax(-1) @ v))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


# ------------------------------------------------------------ building
def test_registered_and_keeps_only_the_image_tower():
    model = MODELS.build(dict(type='OpenCLIPViT', model_name=TINY,
                              random_init=True, seed=3))
    assert isinstance(model, OpenCLIPViT)
    state = model.state_dict()
    # the seeded weights of the loader's CLIP model, image tower only
    clip_model = build_clip_model(TINY, pretrained=None, random_init=True,
                                  seed=3)
    expected = clip_model.visual.state_dict()
    assert sorted(state) == sorted('visual.' + k for k in expected)
    for name, value in expected.items():
        assert torch.equal(state['visual.' + name], value)
    assert (model.embed_dims, model.num_heads, model.num_layers,
            model.patch_size, model.out_dims, model.grid_size) == \
        (WIDTH, HEADS, LAYERS, 16, 32, (4, 4))


def test_prompts_config_builds_the_hook():
    model = MODELS.build(dict(
        type='OpenCLIPViT', model_name=TINY, random_init=True,
        prompts=dict(type='DeepVisualPrompts', num_tokens=5)))
    assert isinstance(model.prompts, DeepVisualPrompts)
    assert model.prompts.embeddings.shape == (LAYERS, 5, WIDTH)
    assert all(p.requires_grad for p in model.prompts.parameters())
    assert not any(p.requires_grad for p in model.visual.parameters())
    # VPT's uniform init for 16-px patches (ZegCLIP _init_prompt)
    bound = math.sqrt(6.0 / (3 * 16 ** 2 + WIDTH))
    assert model.prompts.embeddings.abs().max() <= bound
    assert model.prompts.embeddings.abs().max() > 0.5 * bound


def test_init_weights_keeps_the_loaded_weights():
    """mmengine's runner calls model.init_weights() on the whole model."""

    class Wrapper(BaseModule):
        def __init__(self):
            super().__init__()
            self.backbone = build(prompts=dict(type='DeepVisualPrompts',
                                               num_tokens=2))

    wrapper = Wrapper()
    before = {k: v.clone() for k, v in wrapper.state_dict().items()}
    wrapper.init_weights()
    for name, value in wrapper.state_dict().items():
        assert torch.equal(value, before[name]), name


# ------------------------------------------------- training-free path
STRATEGIES = [
    'Vanilla', 'MaskCLIP', 'SCLIP', 'ClearCLIP', 'NACLIP',
    dict(type='GEM', num_blocks=3),
    dict(type='ProxyCLIP', random_init=True,
         vfm_model='vit_tiny_patch16_224')]


@torch.no_grad()
@pytest.mark.parametrize('strategy', STRATEGIES,
                         ids=lambda s: s if isinstance(s, str) else s['type'])
@pytest.mark.parametrize('attention_heads', [None, 'mean', -1])
def test_forward_dense_features_of_every_strategy(strategy, attention_heads,
                                                  images):
    """The fields of forward_dense against open_clip's own forward (each
    strategy's patch tokens against its formula: test_clip_strategies.py)."""
    backbone = build(dense_strategy=strategy, pos_interp='dino').eval()
    visual = backbone.visual
    feats = backbone.forward_dense(images, attention_layers=(0, 3, -1),
                                   with_cls=True,
                                   attention_heads=attention_heads)
    assert feats.patch_tokens.shape == (2, 32, 4, 4)
    assert feats.patch_size == 16
    assert feats.attn_heads == attention_heads
    assert feats.logit_scale is None  # the text encoder has it
    # the projected CLS of the unmodified stream: open_clip's pooled output
    assert_fp32_close(feats.cls_token, visual(images), STREAM_TERMS)
    assert feats.encode_image == backbone.encode_cls
    assert_fp32_close(feats.encode_image(images), visual(images),
                      STREAM_TERMS)
    assert sorted(feats.attn_weights) == [0, 3, LAYERS - 1]
    heads = HEADS if attention_heads is None else 1
    for weights in feats.attn_weights.values():
        assert weights.shape == (2, heads, 17, 17)
        assert weights.dtype == torch.float32
        # softmax rows (of one head or the mean of four) sum to one
        assert_fp32_close(weights.sum(-1), torch.ones(2, heads, 17), 17 * 4)
    # another window size: the grid follows it, the last block is skipped
    other = backbone.forward_dense(torch.randn(1, 3, 80, 48))
    assert other.patch_tokens.shape == (1, 32, 5, 3)
    assert other.cls_token is None and other.attn_weights == {}


@torch.no_grad()
def test_encode_cls_and_cast_copy(backbone, images):
    copy = backbone.cast_copy(torch.bfloat16, 'cpu')
    assert isinstance(copy, OpenCLIPViT) and copy.dtype == torch.bfloat16
    assert backbone.cast_copy(torch.bfloat16, 'cpu') is copy
    assert list(backbone.state_dict()) == list(build().state_dict())
    # the projected CLS of open_clip's own forward at the pretraining size
    exact = backbone.visual(images)
    assert_fp32_close(backbone.encode_cls(images), exact, STREAM_TERMS)
    half = backbone.encode_cls(images, dtype=torch.bfloat16)
    assert half.dtype == torch.float32 and half.shape == exact.shape
    # each of the 6 blocks rounds to bf16 about 4 times (ln, attention, two
    # linears): relative error r <= 24 eps_bf16, 1 - cos <= r^2 / 2
    rel = 24 * torch.finfo(torch.bfloat16).eps
    assert F.cosine_similarity(half, exact).min() > 1 - rel ** 2 / 2


def test_cast_copy_follows_an_optimiser_step():
    backbone = build(trainable=['ln_post.*'], out_space='normed').train()
    images = torch.randn(1, 3, 64, 64)
    copy = backbone.cast_copy(torch.bfloat16, 'cpu')
    backbone(images)[0][1].sum().backward()
    torch.optim.SGD(backbone.parameters(), lr=1.0).step()
    fresh = backbone.cast_copy(torch.bfloat16, 'cpu')
    assert fresh is not copy
    assert torch.equal(fresh.visual.ln_post.weight,
                       backbone.visual.ln_post.weight.bfloat16())


def test_forward_dense_refuses_prompts(images):
    model = build(prompts=dict(type='DeepVisualPrompts', num_tokens=2))
    with pytest.raises(OVSSConfigError, match='prompts'):
        model.forward_dense(images)


# --------------------------------------------------------- out_indices
@torch.no_grad()
@pytest.mark.parametrize('out_space', ['raw', 'normed', 'projected'])
def test_out_indices_against_open_clip(out_space, images):
    model = build(out_indices=(-1, 1), out_space=out_space).eval()
    outs = model(images)
    visual = model.visual
    x = direct_embed(visual, images)
    stream = []
    for block in visual.transformer.resblocks:
        x = block(x)
        stream.append(x)
    assert len(outs) == 2  # block order, as mmseg's VisionTransformer
    channels = 32 if out_space == 'projected' else WIDTH
    for (patch_map, cls), index in zip(outs, (1, 5)):
        tokens = stream[index]
        if out_space != 'raw':
            tokens = visual.ln_post(tokens)
        if out_space == 'projected':
            tokens = tokens @ visual.proj
        assert patch_map.shape == (2, channels, 4, 4)
        assert cls.shape == (2, channels)
        expected = tokens[:, 1:].reshape(2, 4, 4, channels).permute(0, 3, 1,
                                                                    2)
        assert_fp32_close(patch_map, expected, STREAM_TERMS)
        assert_fp32_close(cls, tokens[:, 0], STREAM_TERMS)
    if out_space == 'projected':
        assert_fp32_close(outs[-1][1], visual(images), STREAM_TERMS)


@torch.no_grad()
def test_blocks_run_only_up_to_the_deepest_output(images):
    model = build(out_indices=1, output_cls_token=False).eval()
    calls = []
    for i, block in enumerate(model.blocks):
        # blocks run written out from their modules (the MLP too, see
        # mlp_forward): count the norms before their MLPs
        block.ln_2.register_forward_hook(lambda *args, i=i: calls.append(i))
    (patch_map,) = model(images)
    assert calls == [0, 1]
    assert patch_map.shape == (2, WIDTH, 4, 4)
    tokens = model.forward_tokens(images, out_indices=(0,),
                                  attention_layers=(2,))
    assert sorted(tokens.layers) == [0] and sorted(tokens.attn_weights) == [2]
    assert tokens.attn_weights[2].shape == (2, HEADS, 17, 17)


@torch.no_grad()
def test_attention_weights_of_chosen_blocks(backbone, images):
    tokens = backbone.forward_tokens(images, out_indices=(),
                                     attention_layers=(0, 2),
                                     attention_heads='mean')
    x = direct_embed(backbone.visual, images)
    blocks = backbone.visual.transformer.resblocks
    for index in range(3):
        if index in (0, 2):
            q, k, _ = attention_heads(blocks[index], blocks[index].ln_1(x))
            weights = (q @ k.transpose(-1, -2) / 4.0).softmax(-1)
            assert_fp32_close(tokens.attn_weights[index],
                              weights.mean(1, keepdim=True), STREAM_TERMS)
        x = blocks[index](x)


# ---------------------------------------------------- layout and embed
@torch.no_grad()
def test_embed_inserts_prefix_and_suffix_without_position(backbone, images):
    torch.manual_seed(4)
    prefix, suffix = torch.randn(1, 3, WIDTH), torch.randn(2, 2, WIDTH)
    x, layout = backbone.embed(images, prefix, suffix)
    assert layout == TokenLayout(3, (4, 4), 2)
    assert (layout.num_tokens, layout.prefix, layout.patches,
            layout.suffix) == (22, slice(1, 4), slice(4, 20), slice(20, 22))
    expected = direct_embed(backbone.visual, images, prefix, suffix)
    assert_fp32_close(x, expected, 4 * WIDTH)


def test_position_embeddings_resize_with_gradients():
    model = build(trainable=['positional_embedding']).train()
    torch.manual_seed(6)
    images = torch.randn(2, 3, 96, 64)  # a 6 x 4 grid
    weights = torch.randn(2, 1 + 24, WIDTH)
    x, layout = model.embed(images)
    assert layout.grid == (6, 4)
    (x * weights).sum().backward()
    got = model.visual.positional_embedding.grad.clone()
    # direct: bicubic resize of the 4 x 4 patch positions, from a leaf copy
    visual = model.visual
    pos = visual.positional_embedding.detach().clone().requires_grad_(True)
    patch_pos = pos[1:].reshape(1, 4, 4, WIDTH).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=(6, 4), mode='bicubic',
                              align_corners=False)
    full = torch.cat([pos[:1], patch_pos.permute(0, 2, 3, 1).reshape(24,
                                                                     WIDTH)])
    tokens = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(2, -1, -1)
    (visual.ln_pre(torch.cat([cls, tokens], 1) + full) * weights).sum(
    ).backward()
    assert got.abs().sum() > 0
    assert_fp32_close(got, pos.grad, 4 * WIDTH * 16)
    # and through the whole stream
    model.visual.positional_embedding.grad = None
    model(images)[0][0].sum().backward()
    assert model.visual.positional_embedding.grad.abs().sum() > 0


def test_token_layout_slices():
    layout = TokenLayout(2, (3, 4), 1)
    assert (layout.num_patches, layout.num_tokens) == (12, 16)
    assert (layout.cls, layout.prefix, layout.patches, layout.suffix) == (
        slice(0, 1), slice(1, 3), slice(3, 15), slice(15, 16))
    assert layout.with_prefix(5) == TokenLayout(5, (3, 4), 1)
    assert layout.with_suffix(0).num_tokens == 15
    with pytest.raises(OVSSConfigError, match='grid'):
        TokenLayout(0, (0, 4))
    with pytest.raises(OVSSConfigError, match='num_prefix'):
        TokenLayout(-1, (2, 2))


# ------------------------------------------------------------ masking
def suffix_blind_mask(kind, layout, batch=2):
    """CLS, prompts and patches never see the suffix (CLIP-RC Fig. 5);
    per_batch: only image 0 is masked."""
    n, s = layout.num_tokens, layout.suffix
    allowed = torch.ones(n, n, dtype=torch.bool)
    allowed[:s.start, s] = False
    if kind == 'bool':
        return allowed
    if kind == 'float':
        return additive_mask(allowed)
    if kind == 'per_head':
        return additive_mask(allowed).expand(1, HEADS, n, n).clone()
    if kind == 'per_batch':
        mask = additive_mask(allowed).repeat(batch, 1, 1, 1)
        mask[1] = 0
        return mask
    raise ValueError(kind)


@torch.no_grad()
@pytest.mark.parametrize('kind', ['float', 'bool', 'callable', 'per_head',
                                  'per_batch'])
def test_a_masked_token_has_no_influence(backbone, images, kind):
    torch.manual_seed(7)
    suffix = torch.randn(1, 2, WIDTH)
    layout = TokenLayout(0, (4, 4), 2)
    if kind == 'callable':
        seen = []

        def mask(block_layout):
            seen.append(block_layout)
            return suffix_blind_mask('float', block_layout)
    else:
        mask = suffix_blind_mask(kind, layout)
    every = tuple(range(LAYERS))
    base = backbone.forward_tokens(images, suffix_tokens=suffix,
                                   attn_mask=mask, out_indices=every)
    # (a random shift: ln_pre would remove a constant one)
    moved = backbone.forward_tokens(images,
                                    suffix_tokens=suffix + torch.randn(1, 2,
                                                                       WIDTH),
                                    attn_mask=mask, out_indices=every)
    if kind == 'callable':
        assert seen == [layout] * (2 * LAYERS)
    masked_images = [0] if kind == 'per_batch' else [0, 1]
    for index in every:
        a, b = base.layers[index], moved.layers[index]
        keep = slice(0, layout.suffix.start)
        torch.testing.assert_close(a[masked_images, keep],
                                   b[masked_images, keep], rtol=0, atol=1e-6)
        assert not torch.allclose(a[:, layout.suffix], b[:, layout.suffix])
    if kind == 'per_batch':
        assert not torch.allclose(base.layers[5][1, :17],
                                  moved.layers[5][1, :17])
    # the masked stream against a direct computation of Eq. 2
    x = direct_embed(backbone.visual, images, suffix=suffix)
    float_mask = suffix_blind_mask('float', layout)
    if kind == 'per_batch':
        float_mask = suffix_blind_mask('per_batch', layout)
    for index, block in enumerate(backbone.blocks):
        x = direct_block(block, x, float_mask)
        assert_fp32_close(base.layers[index], x, (index + 1) * BLOCK_TERMS)


@torch.no_grad()
def test_masked_attention_weights_are_zero_where_blocked(backbone, images):
    layout = TokenLayout(0, (4, 4), 2)
    mask = suffix_blind_mask('bool', layout)
    suffix = torch.randn(1, 2, WIDTH)
    weighted = backbone.forward_tokens(images, suffix_tokens=suffix,
                                       attn_mask=mask, out_indices=(1,),
                                       attention_layers=(0, 1))
    plain = backbone.forward_tokens(images, suffix_tokens=suffix,
                                    attn_mask=mask, out_indices=(1,))
    for weights in weighted.attn_weights.values():
        assert weights.shape == (2, HEADS, 19, 19)
        assert torch.all(weights[:, :, :17, 17:] == 0)
    # the explicit softmax and SDPA give the same block outputs
    assert_fp32_close(weighted.layers[1], plain.layers[1], 2 * BLOCK_TERMS)


@pytest.mark.parametrize('mask', [
    torch.zeros(18, 18), torch.zeros(3, 1, 17, 17),
    torch.zeros(1, 3, 17, 17), torch.zeros(17, 17, dtype=torch.long),
    lambda layout: torch.zeros(layout.num_tokens + 1, layout.num_tokens)])
def test_a_wrong_mask_is_a_clear_error(backbone, images, mask):
    with pytest.raises(OVSSConfigError, match=r'attn_mask'):
        backbone(images, attn_mask=mask)


def test_wrong_mask_names_the_expected_shape(backbone, images):
    with pytest.raises(OVSSConfigError, match=r'\(2, 4, 17, 17\)'):
        backbone(images, attn_mask=torch.zeros(16, 16))


# ------------------------------------------------------------- prompts
def direct_prompted_stream(model, images, depth):
    """ZegCLIP's forward_deep_prompt written from the weights: before
    block 0 insert set 0 after CLS, before block i < depth replace the
    prompts by set i, later blocks keep them."""
    prompts = model.prompts
    k = prompts.num_tokens
    proj = prompts.projection
    x = direct_embed(model.visual, images)
    stream = []
    for index, block in enumerate(model.visual.transformer.resblocks):
        if index < depth:
            p = prompts.embeddings[index] @ proj.weight.T + proj.bias
            p = p.expand(x.shape[0], -1, -1)
            rest = x[:, 1:] if index == 0 else x[:, 1 + k:]
            x = torch.cat([x[:, :1], p, rest], dim=1)
        x = block(x)
        stream.append(x)
    return stream


@torch.no_grad()
@pytest.mark.parametrize('depth', [None, 2])
def test_deep_prompts_equal_a_direct_computation(images, depth):
    model = build(out_indices=tuple(range(LAYERS)),
                  prompts=dict(type='DeepVisualPrompts', num_tokens=3,
                               depth=depth)).eval()
    tokens = model.forward_tokens(images)
    stream = direct_prompted_stream(model, images, depth or LAYERS)
    for index, expected in enumerate(stream):
        assert tokens.layouts[index] == TokenLayout(3, (4, 4))
        assert_fp32_close(tokens.layers[index], expected,
                          (index + 1) * BLOCK_TERMS)
    # forward's patch maps leave the prompts out
    patch_map, cls = model(images)[-1]
    expected = stream[-1][:, 4:].reshape(2, 4, 4, WIDTH).permute(0, 3, 1, 2)
    assert_fp32_close(patch_map, expected, STREAM_TERMS)
    assert_fp32_close(tokens.patch_map(5), expected, STREAM_TERMS)
    assert_fp32_close(cls, stream[-1][:, 0], STREAM_TERMS)
    assert tokens.prefix(5).shape == (2, 3, WIDTH)


def test_prompt_dropout_is_drawn_per_image_in_training():
    prompts = DeepVisualPrompts(num_tokens=4, embed_dims=WIDTH,
                                num_layers=2, dropout=0.5).train()
    torch.manual_seed(8)
    p = prompts.prompt_set(0, 2)
    assert p.shape == (2, 4, WIDTH)
    assert not torch.equal(p[0], p[1])
    prompts.eval()
    p = prompts.prompt_set(0, 2)
    assert torch.equal(p[0], p[1])


# ----------------------------------------------------------- drop path
def test_drop_path_is_identity_in_eval_and_active_in_training(images):
    model = build(drop_path_rate=0.5, out_indices=(-1,))
    plain = build().eval()
    rates = [m.drop_prob for m in model.drop_paths]
    assert rates == pytest.approx([0.5 * i / (LAYERS - 1)
                                   for i in range(LAYERS)])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images)[0][0], plain(images)[0][0])
    model.train()
    assert model.training and all(m.training for m in model.drop_paths)
    # the frozen CLIP stays in eval under train()
    assert not any(m.training for m in model.visual.modules())
    with torch.no_grad():
        torch.manual_seed(9)
        first = model(images)[0][0]
        second = model(images)[0][0]
    assert not torch.allclose(first, plain(images)[0][0])
    assert not torch.allclose(first, second)


# ---------------------------------------------------------- bad inputs
@pytest.mark.parametrize('kwargs, match', [
    (dict(freeze='some'), 'freeze policy'),
    (dict(out_indices=(6,)), 'out_indices holds 6'),
    (dict(out_indices=(-7,)), 'out_indices holds -7'),
    (dict(out_attention=(1.5,)), 'out_attention'),
    (dict(out_space='logits'), 'out_space'),
    (dict(pos_interp='nearest'), 'pos_interp'),
    (dict(drop_path_rate=1.0), 'drop_path_rate'),
    (dict(trainable=['no_such.*']), 'matches no parameter'),
    (dict(prompts=dict(type='DeepVisualPrompts', depth=7)), 'depth=7'),
    (dict(prompts=dict(type='NoSuchHook')), 'NoSuchHook'),
])
def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(OVSSConfigError, match=match):
        build(**kwargs)


def test_bad_extra_tokens_and_hooks_are_clear_errors(backbone, images):
    with pytest.raises(OVSSConfigError, match=r'prefix_tokens .*\(2 or 1'):
        backbone(images, prefix_tokens=torch.zeros(1, 2, WIDTH + 1))
    with pytest.raises(OVSSConfigError, match='suffix_tokens'):
        backbone(images, suffix_tokens=torch.zeros(3, 2, WIDTH))
    with pytest.raises(OVSSConfigError, match='attention_layers'):
        backbone.forward_tokens(images, attention_layers=(9,))
    with pytest.raises(OVSSConfigError, match='attention_heads'):
        backbone.forward_tokens(images, attention_heads=4)

    def grows_without_layout(index, x, layout):
        return torch.cat([x, x[:, :1]], dim=1)
    with pytest.raises(OVSSConfigError, match='do not fit the layout'):
        backbone(images, block_hook=grows_without_layout)
    with pytest.raises(OVSSConfigError, match='returned list'):
        backbone(images, block_hook=lambda index, x, layout: [x])


def test_a_read_only_hook_and_a_token_replacing_hook(backbone, images):
    seen = []

    def read(index, x, layout):
        seen.append((index, tuple(x.shape), layout))

    with torch.no_grad():
        backbone(images, block_hook=read)
        zeroed = backbone.forward_tokens(
            images, out_indices=(0,),
            block_hook=lambda index, x, layout: torch.zeros_like(x))
    assert seen == [(i, (2, 17, WIDTH), TokenLayout(0, (4, 4)))
                    for i in range(LAYERS)]
    block = backbone.blocks[0]
    assert_fp32_close(zeroed.layers[0],
                      direct_block(block, torch.zeros(2, 17, WIDTH)),
                      BLOCK_TERMS)


def test_the_backbone_traces_for_flop_counting():
    """mmengine's FlopAnalyzer traces the model with torch.jit: the token
    layout must take the traced sizes (0-dim tensors) as ints."""
    from mmengine.analysis import FlopAnalyzer
    from mmseg_ovss.testing.tiny_clip import register_tiny_clip_models
    register_tiny_clip_models()
    backbone = OpenCLIPViT(model_name='ovss-tiny-ViT-16', random_init=True,
                           out_space='projected').eval()
    images = torch.randn(1, 3, 64, 64)
    flops = FlopAnalyzer(backbone, (images, )).unsupported_ops_warnings(
        False).uncalled_modules_warnings(False)
    # at least the patch embedding: 16 patches x (3*16*16) x width 64
    assert flops.total() >= 16 * 3 * 16 * 16 * 64
    with torch.no_grad():
        traced = torch.jit.trace(backbone, (images, ), check_trace=False)
        torch.testing.assert_close(traced(images)[0][0],
                                   backbone(images)[0][0])
