"""Freeze policies: what trains, what gets gradients, what stays in eval.

On the tiny random open_clip ViT (6 blocks, width 64) inside
:class:`OpenCLIPViT`; the expected trainable sets are written from the
policies' definitions (parameter names), and the split q/k/v attention is
compared with the unsplit block of the same weights.
"""
import fnmatch

import pytest
import torch

from mmseg_ovss.clip.attention import cls_block_forward, project_qkv
from mmseg_ovss.clip.freeze import (apply_freeze_policy, frozen_submodules,
                                    qkv_parts, split_qkv_projection)
from mmseg_ovss.models.backbones import OpenCLIPViT
from mmseg_ovss.testing.direct import assert_fp32_close, attention_heads
from mmseg_ovss.testing.tiny_clip import build_tiny_clip
from mmseg_ovss.utils.errors import OVSSConfigError

TINY = 'ovss-tiny-ViT-16'
LAYERS, WIDTH = 6, 64
STREAM_TERMS = (LAYERS + 1) * 8 * 4 * WIDTH
SPLIT = 'transformer.resblocks.{}.attn.parametrizations.in_proj_{}.original{}'


def build(**kwargs):
    return OpenCLIPViT(model_name=TINY, random_init=True,
                       out_space='projected', **kwargs)


def q_and_v_names():
    return {SPLIT.format(i, kind, part) for i in range(LAYERS)
            for kind in ('weight', 'bias') for part in (0, 2)}


def expected_trainable(policy, names, extra=()):
    """Parameter names of ``visual`` that train, from the definitions."""
    if policy == 'none':
        chosen = set(names)
    elif policy == 'attn_qv':
        chosen = q_and_v_names()
    else:
        chosen = set()
    return chosen | {n for n in names for p in extra
                     if fnmatch.fnmatchcase(n, p)}


CASES = [
    ('all', (), True),
    ('all', ('ln_post.*', 'positional_embedding'), False),
    ('attn_qv', (), False),
    ('none', (), False),
]


@pytest.mark.parametrize('policy, trainable, with_prompts', CASES)
def test_gradients_reach_exactly_the_trainable_parameters(
        policy, trainable, with_prompts):
    prompts = dict(type='DeepVisualPrompts', num_tokens=2) \
        if with_prompts else None
    model = build(freeze=policy, trainable=trainable, prompts=prompts)
    model.train()
    visual_names = [n for n, _ in model.visual.named_parameters()]
    want = expected_trainable(policy, visual_names, trainable)
    got = {n for n, p in model.visual.named_parameters() if p.requires_grad}
    assert got == want
    if policy == 'attn_qv':
        # the keys' third of every in-projection stays frozen
        assert all(SPLIT.format(i, k, 1) in visual_names
                   for i in range(LAYERS) for k in ('weight', 'bias'))
    torch.manual_seed(0)
    images = torch.randn(2, 3, 80, 48)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    patch_map, cls = model(images)[0]
    (patch_map.square().mean() + cls.square().mean()).backward()
    for name, param in model.named_parameters():
        trains = name.startswith('prompts.') or \
            name.removeprefix('visual.') in want
        if trains:
            assert param.grad is not None and param.grad.abs().sum() > 0, \
                name
        else:
            assert param.grad is None, name
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    optimiser.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(param.detach(), before[name])
        assert changed == (param.grad is not None), name


def test_train_keeps_frozen_submodules_in_eval():
    model = build(freeze='attn_qv', drop_path_rate=0.1).train()
    assert model.training and all(m.training for m in model.drop_paths)
    visual = model.visual
    assert not visual.conv1.training and not visual.ln_post.training
    for block in visual.transformer.resblocks:
        assert block.training and block.attn.training  # q, v train
        assert not block.mlp.training and not block.ln_1.training
        assert not block.attn.out_proj.training
    frozen = frozen_submodules(model)
    assert visual.conv1 in frozen and visual not in frozen
    model = build(freeze='none').train()
    assert all(m.training for m in model.visual.modules())
    model = build().train()
    assert frozen_submodules(model) == [model.visual]
    assert not any(m.training for m in model.visual.modules())
    model.eval()
    assert not model.training


@torch.no_grad()
def test_split_qkv_computes_what_the_fused_projection_does():
    plain = build_tiny_clip(TINY, seed=0).visual
    split = build_tiny_clip(TINY, seed=0).visual
    for block in split.transformer.resblocks:
        fused = block.attn.in_proj_weight.clone()
        split_qkv_projection(block.attn)
        split_qkv_projection(block.attn)  # idempotent
        assert torch.equal(block.attn.in_proj_weight, fused)
        q, k, v = qkv_parts(block.attn)
        assert q.shape == k.shape == v.shape == (WIDTH, WIDTH)
        assert torch.equal(k, fused[WIDTH:2 * WIDTH])
    torch.manual_seed(1)
    x = torch.randn(2, 17, WIDTH)
    for block, reference in zip(split.transformer.resblocks,
                                plain.transformer.resblocks):
        # nn.MultiheadAttention.forward on the parametrised weights
        assert torch.equal(block(x), reference(x))
        h = block.ln_1(x)
        for got, want in zip(project_qkv(block, h),
                             attention_heads(reference, h)):
            assert_fp32_close(got, want, WIDTH)
        assert_fp32_close(cls_block_forward(block, x), reference(x)[:, :1],
                          8 * 4 * WIDTH)


@torch.no_grad()
def test_attn_qv_backbone_gives_the_frozen_numbers():
    frozen, split = build().eval(), build(freeze='attn_qv').eval()
    torch.manual_seed(2)
    images = torch.randn(2, 3, 64, 64)
    for a, b in zip(split(images)[0], frozen(images)[0]):
        assert_fp32_close(a, b, STREAM_TERMS)
    dense_a = split.forward_dense(images, attention_layers=(1,),
                                  with_cls=True)
    dense_b = frozen.forward_dense(images, attention_layers=(1,),
                                   with_cls=True)
    assert_fp32_close(dense_a.patch_tokens, dense_b.patch_tokens,
                      STREAM_TERMS)
    assert_fp32_close(dense_a.cls_token, dense_b.cls_token, STREAM_TERMS)
    assert_fp32_close(dense_a.attn_weights[1], dense_b.attn_weights[1],
                      STREAM_TERMS)
    assert_fp32_close(split.encode_cls(images), frozen.encode_cls(images),
                      STREAM_TERMS)
    # a cast copy of the parametrised tower (deep copy with the cast memo)
    assert torch.equal(split.encode_cls(images, dtype=torch.bfloat16),
                       frozen.encode_cls(images, dtype=torch.bfloat16))


def test_attn_qv_state_dict_round_trip():
    source, target = build(freeze='attn_qv'), build(freeze='attn_qv',
                                                    seed=5)
    with torch.no_grad():
        for param in source.parameters():
            param.add_(0.01)
    target.load_state_dict(source.state_dict())
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(target.eval()(images)[0][1],
                           source.eval()(images)[0][1])


def test_attn_qv_splits_every_attention_of_a_clip_model():
    model = build_tiny_clip(TINY, seed=0)
    apply_freeze_policy(model, 'attn_qv')
    attentions = [m for m in model.modules()
                  if isinstance(m, torch.nn.MultiheadAttention)]
    assert len(attentions) == LAYERS + 2  # the text tower's two blocks too
    for attn in attentions:
        q, k, v = qkv_parts(attn)
        assert q.requires_grad and v.requires_grad and not k.requires_grad
        assert not attn.out_proj.weight.requires_grad


def test_bad_policies_are_clear_errors():
    model = build_tiny_clip(TINY, seed=0)
    with pytest.raises(OVSSConfigError, match=r"'attn_kv'.*'all', 'none'"):
        apply_freeze_policy(model.visual, 'attn_kv')
    with pytest.raises(OVSSConfigError, match="'ln_last.*' matches no"):
        apply_freeze_policy(model.visual, 'all', ['ln_last.*'])
    with pytest.raises(OVSSConfigError, match='no nn.MultiheadAttention'):
        apply_freeze_policy(model.visual.ln_post, 'attn_qv')
    with pytest.raises(OVSSConfigError, match='nn.MultiheadAttention'):
        split_qkv_projection(model.visual.ln_post)
