"""GEM as the ClearCLIP repository runs it, and the official GEM scoring.

References are written from the repositories' formulas with the tiny
random open_clip ViT's raw weights (``ovss-tiny-ViT-16``: 6 blocks, width
64, 4 heads), independently of ``mmseg_ovss.clip.attention``:

- ``mc-lan/ClearCLIP`` ``gem/gem_utils.py`` (``ignore_residual=True``):
  every replaced block overwrites the GEM path with its own self-self
  attention output;
- ``WalBouss/GEM`` ``gem/gem_wrapper.py`` (``min_max``) and its README's
  background rule.
"""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import mmseg_ovss  # noqa: F401
from mmseg_ovss.clip.features import VocabularyEmbeddings
from mmseg_ovss.clip.strategies import build_dense_strategy
from mmseg_ovss.models.backbones import OpenCLIPViT
from mmseg_ovss.testing.direct import (EPS32, assert_fp32_close,
                                      attention_heads, merge_heads)
from mmseg_ovss.testing.tiny_clip import build_tiny_clip
from mmseg_ovss.utils.errors import OVSSConfigError

REPO = Path(__file__).resolve().parents[1]
init_default_scope('mmseg')


@pytest.fixture(scope='module')
def clip_model():
    return build_tiny_clip('ovss-tiny-ViT-16', seed=0)


@pytest.fixture(scope='module')
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64)  # the model's native 4x4 grid


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
    return inputs


def gem_attention_output(block, x):
    """out_proj(mean_z softmax(z' z'^T t) v), one refinement, adaptive t."""
    h = block.ln_1(x)
    q, k, v = attention_heads(block, h)
    t = h.norm(dim=-1).mean(-1).view(-1, 1, 1, 1) / math.sqrt(q.shape[-1])
    outs = []
    for z in (v, k, q):
        z = F.normalize(z, dim=-1)
        z = ((z @ z.transpose(-1, -2)) * t).softmax(-1) @ z
        z = F.normalize(z, dim=-1)
        outs.append(((z @ z.transpose(-1, -2)) * t).softmax(-1) @ v)
    return merge_heads(block, (outs[0] + outs[1] + outs[2]) / 3)


def to_dense(model, tokens):
    y = model.visual.ln_post(tokens[:, 1:]) @ model.visual.proj
    return y.transpose(1, 2).reshape(y.shape[0], -1, 4, 4)


def run(model, strategy, images):
    backbone = OpenCLIPViT(visual=model.visual, dense_strategy=strategy)
    with torch.no_grad():
        return backbone.eval().forward_dense(images).patch_tokens


# in_proj, q q^T, attention x v, out_proj, ln_post, proj: six reductions of
# at most width 64 terms, a few times over (the self-self iteration)
STRATEGY_TERMS = 64 * 6 * 2


@torch.no_grad()
def test_gem_without_residual_is_the_clearclip_repo_chain(clip_model, images):
    """ignore_residual=True: each of the 6 GEM blocks overwrites the path."""
    inputs = stream_inputs(clip_model, images)
    blocks = clip_model.visual.transformer.resblocks
    path = None
    for block, x in zip(blocks[-6:], inputs[-6:]):
        path = gem_attention_output(block, x)  # x_gem = x_gem_res
    expected = to_dense(clip_model, path)
    got = run(clip_model, dict(type='GEM', num_blocks=6, residual=False),
              images)
    assert_fp32_close(got, expected, STRATEGY_TERMS)
    # the option matters: the residual path of the paper is another output
    with_residual = run(clip_model, dict(type='GEM', num_blocks=6), images)
    assert (with_residual - got).abs().max() > 100 * STRATEGY_TERMS * \
        EPS32 * expected.abs().max()


@torch.no_grad()
def test_gem_residual_path_is_the_official_sum(clip_model, images):
    inputs = stream_inputs(clip_model, images)
    blocks = clip_model.visual.transformer.resblocks
    path = inputs[-6]
    for block, x in zip(blocks[-6:], inputs[-6:]):
        path = path + gem_attention_output(block, x)  # x_gem + x_gem_res
    got = run(clip_model, dict(type='GEM', num_blocks=6, residual=True),
              images)
    assert_fp32_close(got, to_dense(clip_model, path), STRATEGY_TERMS * 6)


@pytest.mark.parametrize('kwargs,match', [
    (dict(residual='no'), 'residual must be True or False'),
    (dict(temperature=0.0), 'temperature'),
    (dict(temperature=-2.0), 'temperature'),
    (dict(num_blocks=0), 'num_blocks'),
])
def test_gem_strategy_rejects_bad_options(kwargs, match):
    with pytest.raises(OVSSConfigError, match=match):
        build_dense_strategy(dict(type='GEM', **kwargs))


def vocabulary(synonyms, background=None):
    query_to_class = torch.tensor(
        [c for c, words in enumerate(synonyms) for _ in words])
    return VocabularyEmbeddings(
        query_embeddings=torch.zeros(len(query_to_class), 4),
        query_to_class=query_to_class,
        class_names=[words[0] for words in synonyms],
        synonyms=[list(words) for words in synonyms],
        background_class=background)


def gem_head(**kwargs):
    return MODELS.build(dict(type='GEMHead', **kwargs))


def direct_min_max(maps):
    """Per (image, map) (m - min) / (max - min), one map at a time."""
    out = torch.empty_like(maps)
    for n in range(maps.shape[0]):
        for q in range(maps.shape[1]):
            m = maps[n, q]
            out[n, q] = (m - m.min()) / (m.max() - m.min())
    return out


def test_gem_head_min_max_and_synonym_max():
    torch.manual_seed(0)
    maps = torch.rand(2, 5, 7, 9) * 2 - 1
    vocab = vocabulary([('cat', 'kitten'), ('dog',), ('sky', 'cloud')])
    scores = gem_head().class_scores(maps, vocab)
    normed = direct_min_max(maps)
    expected = torch.stack([torch.maximum(normed[:, 0], normed[:, 1]),
                            normed[:, 2],
                            torch.maximum(normed[:, 3], normed[:, 4])], 1)
    # a difference and a division per value: a few eps of [0, 1] values
    assert_fp32_close(scores, expected, 4)
    assert scores.amin() == 0 and scores.amax() == 1
    # min-max removes any positive scale: logit_scale has no effect
    assert_fp32_close(gem_head(logit_scale=7.0).class_scores(maps * 3, vocab),
                      expected, 8)
    assert type(gem_head()).pixelwise_scores is False


def test_gem_head_constant_map_scores_zero_not_nan():
    maps = torch.rand(1, 2, 5, 6)
    maps[0, 1] = 0.3  # no range: the official code divides by zero
    scores = gem_head().class_scores(maps, vocabulary([('a',), ('b',)]))
    assert torch.isfinite(scores).all()
    assert (scores[0, 1] == 0).all()


def readme_labels(maps, background, threshold, scale=1.0):
    """WalBouss/GEM README: pred = argmax over the foreground maps (+1 past
    the background index), background where max softmax < threshold (the
    README indexes with the probabilities themselves, a shape error; their
    max is what the text describes)."""
    fg = [c for c in range(maps.shape[1]) if c != background]
    normed = direct_min_max(maps[:, fg])
    pred = torch.tensor(fg)[normed.argmax(1)]
    probs = (scale * normed).softmax(1)
    pred[probs.max(1).values < threshold] = background
    return pred


@pytest.mark.parametrize('background,scale,threshold', [
    (0, 1.0, 0.4), (2, 1.0, 0.42), (0, 5.0, 0.7)])
def test_gem_head_readme_background_rule(background, scale, threshold):
    torch.manual_seed(1)
    maps = torch.rand(2, 4, 6, 8)  # 3 foreground classes
    vocab = vocabulary([('a',), ('b',), ('c',), ('d',)], background)
    head = gem_head(background_threshold=threshold,
                    background_logit_scale=scale)
    scores = head.class_scores(maps, vocab)
    expected = readme_labels(maps, background, threshold, scale)
    torch.testing.assert_close(scores.argmax(1), expected)
    fired = expected == background
    assert fired.any() and (~fired).any()  # both outcomes are exercised
    back = scores[:, background]
    assert (back[fired] == threshold).all() and (back[~fired] == 0).all()


def test_gem_head_unreachable_background_threshold_is_an_error():
    """The README's 0.85 with 20 foreground classes: the softmax of values
    in [0, 1] peaks at e / (e + 19) = 0.125, so every pixel would be
    background."""
    maps = torch.rand(1, 21, 4, 4)
    vocab = vocabulary([(f'c{i}',) for i in range(21)], background=0)
    with pytest.raises(OVSSConfigError, match=r'\(0\.05, 0\.1252\].*every '
                       'pixel would be background'):
        gem_head(background_threshold=0.85).class_scores(maps, vocab)
    with pytest.raises(OVSSConfigError, match='no pixel would be background'):
        gem_head(background_threshold=0.05).class_scores(maps, vocab)
    no_background = vocabulary([('a',), ('b',)])
    with pytest.raises(OVSSConfigError, match='needs a vocabulary with a '
                       'background class'):
        gem_head(background_threshold=0.6).class_scores(
            torch.rand(1, 2, 3, 3), no_background)
    for bad in (dict(background_threshold=1.5),
                dict(background_threshold=0.0),
                dict(background_logit_scale=0.0)):
        with pytest.raises(OVSSConfigError, match='GEMHead'):
            gem_head(**bad)


@torch.no_grad()
def test_gem_head_in_the_segmentor_scores_the_upsampled_maps():
    """class_scores receives the stitched maps resized to the output size;
    the head min-maxes each query map there."""
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='CLIPDenseSegmentor',
        clip=dict(model_name='ovss-tiny-ViT-16', random_init=True),
        backbone=dict(dense_strategy=dict(type='GEM', num_blocks=3,
                                          residual=False)),
        text_encoder=dict(templates='single'),
        decode_head=dict(type='GEMHead'),
        test_cfg=dict(mode='slide', crop_size=(32, 32), stride=(16, 16))))
    model.set_vocabulary(['cat, kitten', 'dog', 'grass'])
    vocab = model.vocabulary_embeddings()
    image = torch.randn(1, 3, 40, 56)
    scores = model.class_scores(image, vocab, (50, 70))
    maps = F.interpolate(model.inference_maps(image, vocab), size=(50, 70),
                         mode='bilinear', align_corners=False)
    normed = direct_min_max(maps)[0]
    expected = torch.stack([torch.maximum(normed[0], normed[1]), normed[2],
                            normed[3]])
    assert_fp32_close(scores, expected, 4)


def load(name):
    return Config.fromfile(str(REPO / 'configs' / 'baselines' / f'{name}.py'))


DATASETS = ('voc21', 'pc60', 'object', 'voc20', 'city', 'pc59', 'ade',
            'stuff')


@pytest.mark.parametrize('dataset', DATASETS)
def test_clearclip_repo_gem_configs(dataset):
    """GEM path without residual, tau 50, and the ClearCLIP configs'
    vocabulary, background words, thresholds and windows."""
    cfg, clear, gem = (load(f'gem_clearclip_{dataset}'),
                       load(f'clearclip_{dataset}'), load(f'gem_{dataset}'))
    assert cfg.model.backbone.dense_strategy == dict(
        type='GEM', num_blocks=6, iterations=1, temperature=None,
        residual=False)
    assert cfg.model.decode_head.logit_scale == 50.0
    # gem_<ds> may allow shared synonyms for its own (SCLIP) file
    assert {**cfg.model.text, 'shared_synonyms': 'error'} == \
        {'shared_synonyms': 'error', **clear.model.text}
    assert cfg.model.prob_thd == clear.model.prob_thd
    assert cfg.model.test_cfg == clear.model.test_cfg
    assert cfg.model.backbone.pos_interp == gem.model.backbone.pos_interp \
        == 'size_antialias'
    assert cfg.model.text_encoder == clear.model.text_encoder


@pytest.mark.parametrize('dataset', ('voc21', 'pc59', 'ade'))
def test_official_gem_configs(dataset):
    cfg, gem = load(f'gem_official_{dataset}'), load(f'gem_{dataset}')
    assert cfg.model.decode_head.type == 'GEMHead'
    assert cfg.model.decode_head.background_threshold is None
    assert cfg.model.text_encoder.templates == 'single'
    assert 'templates' not in cfg.model.text
    assert cfg.model.backbone == gem.model.backbone
    assert cfg.model.test_cfg == gem.model.test_cfg
    assert cfg.model.prob_thd == 0.0
