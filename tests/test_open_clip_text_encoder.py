"""OpenCLIPTextEncoder: open_clip's text tower, frozen (cached) or trainable.

Direct computations use open_clip's own ``encode_text`` on a CLIP model
built from the same seed (or loaded with the encoder's current weights).
"""
import functools
import json

import pytest
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

import mmseg_ovss  # noqa: F401  (registers the modules)
from mmseg_ovss.clip.loading import build_clip_model
from mmseg_ovss.clip.templates import (NAMED_TEMPLATES, VILD_TEMPLATES,
                                       load_templates)
from mmseg_ovss.clip.text_encoder import build_tokenizer
from mmseg_ovss.clip.vocabulary import Vocabulary
from mmseg_ovss.testing.direct import assert_fp32_close
from mmseg_ovss.utils.errors import OVSSConfigError

MODEL = 'ovss-tiny-ViT-16'
TEMPLATES = ['a photo of a {}.', 'art of the {}.', 'a {} in a very long '
             'sentence that makes this prompt the longest of the batch.']
QUERIES = ['cat', 'sky', 'person in a shirt', 'dog']
SENTENCES = ['a photo of a cat.', 'a very long sentence about a small grey '
             'cat sitting on a red mat in the sun.', 'dog']


def build(**kwargs):
    cfg = dict(type='OpenCLIPTextEncoder', model_name=MODEL,
               random_init=True, seed=0, templates=TEMPLATES)
    cfg.update(kwargs)
    return MODELS.build(cfg)


def clip_model(seed=0, name=MODEL):
    return build_clip_model(name, pretrained=None, random_init=True,
                            seed=seed)


def clip_with_weights_of(encoder):
    """A CLIP model carrying the encoder's current text weights."""
    model = clip_model()
    result = model.load_state_dict(encoder.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith('visual.') for k in result.missing_keys)
    return model


def text_terms(model) -> int:
    """fp32 rounding order of one text-tower output: per block the chained
    reductions of attention (head dim, softmax and value sums over the
    context), the projections (width) and the MLP (width, MLP width), two
    layer norms; then ln_final, the text projection and the L2 norm."""
    blocks = model.transformer.resblocks
    width = model.transformer.width
    heads = blocks[0].attn.num_heads
    mlp = blocks[0].mlp.c_fc.out_features
    ctx = model.context_length
    out_dims = model.text_projection.shape[-1]
    per_block = width // heads + 2 * ctx + 4 * width + mlp
    return len(blocks) * per_block + 2 * width + out_dims


@functools.lru_cache(maxsize=None)
def tokenizer(name=MODEL):
    return build_tokenizer(name)


def direct_text(model, sentences, name=MODEL):
    """open_clip's own text tower on the full context, L2-normalised."""
    with torch.no_grad():
        tokens = tokenizer(name)(list(sentences))
        return F.normalize(model.encode_text(tokens), dim=-1)


def direct_queries(model, queries, templates, name=MODEL):
    """CLIP's prompt ensembling (Radford et al. 2021, Sec. 3.1.4) query by
    query: normalise(mean_t normalise(E(t(q))))."""
    rows = []
    for query in queries:
        prompts = [t.format(query) for t in templates]
        rows.append(F.normalize(direct_text(model, prompts, name).mean(0),
                                dim=0))
    return torch.stack(rows)


@pytest.fixture(scope='module')
def frozen():
    return build()


@pytest.fixture(scope='module')
def reference():
    return clip_model()


# ------------------------------------------------------------ weights
def test_registered_module_keeps_only_the_text_tower(frozen, reference):
    state = frozen.state_dict()
    expected = {k: v for k, v in reference.state_dict().items()
                if not k.startswith('visual.')}
    assert set(state) == set(expected)
    assert not any('visual' in k for k in state)
    assert not hasattr(frozen, 'visual')
    for name, value in expected.items():
        assert torch.equal(state[name], value), name
    assert torch.equal(frozen.attn_mask, reference.attn_mask)
    assert 'attn_mask' not in state  # non-persistent, as in open_clip
    assert frozen.text_pool_type == reference.text_pool_type == 'argmax'
    assert not any(p.requires_grad for p in frozen.parameters())


def test_logit_scale_is_the_temperature(reference):
    encoder = build(freeze='none')
    scale = encoder.logit_scale
    assert scale.dim() == 0 and scale.dtype == torch.float32
    assert torch.equal(scale, reference.logit_scale.exp())
    params = dict(encoder.named_parameters())
    assert torch.equal(params['logit_scale'], reference.logit_scale)
    # 'none' trains the tower, the temperature only when named
    assert not params['logit_scale'].requires_grad
    named = build(freeze='all', trainable=['logit_scale'])
    assert dict(named.named_parameters())['logit_scale'].requires_grad
    assert not named.tracks_gradients()  # the embeddings do not depend on it


# ------------------------------------------------------------ numbers
@torch.no_grad()
def test_vocabulary_embeddings_equal_direct_prompt_ensembling(frozen,
                                                              reference):
    vocab = Vocabulary.from_names(['sky, wall', 'cat', 'person'],
                                  background_class=0)
    emb = frozen.embed_vocabulary(vocab)
    assert_fp32_close(emb.query_embeddings,
                      direct_queries(reference, ['sky', 'wall', 'cat',
                                                 'person'], TEMPLATES),
                      text_terms(reference) + len(TEMPLATES))
    assert emb.query_to_class.tolist() == [0, 0, 1, 2]
    assert emb.query_to_class.dtype == torch.long
    assert emb.class_names == ['sky', 'cat', 'person']
    assert emb.synonyms == [['sky', 'wall'], ['cat'], ['person']]
    assert emb.background_class == 0
    assert_fp32_close(emb.encode_text(SENTENCES),
                      direct_text(reference, SENTENCES),
                      text_terms(reference))
    assert frozen(vocab) is emb  # calling with a Vocabulary: cached entry


@torch.no_grad()
@pytest.mark.parametrize('truncate', [True, False])
def test_encode_text_equals_open_clip(reference, truncate):
    encoder = build(truncate_context=truncate)
    got = encoder.encode_text(SENTENCES)
    expected = direct_text(reference, SENTENCES)
    if truncate:  # shorter sequences: other summation orders
        assert_fp32_close(got, expected, text_terms(reference))
    else:  # the same operations on the same tensors
        assert torch.equal(got, expected)


@torch.no_grad()
def test_per_template_embeddings_equal_a_direct_loop(reference):
    encoder = build(batch_size=4)  # chunks cut at different lengths
    per_template = encoder.encode_templates(QUERIES)
    assert per_template.shape == (len(QUERIES), len(TEMPLATES), 32)
    terms = text_terms(reference)
    for i, query in enumerate(QUERIES):
        for j, template in enumerate(TEMPLATES):
            assert_fp32_close(
                per_template[i, j],
                direct_text(reference, [template.format(query)])[0], terms)
    assert_fp32_close(encoder.encode_queries(QUERIES),
                      direct_queries(reference, QUERIES, TEMPLATES),
                      terms + len(TEMPLATES))
    assert torch.equal(encoder(QUERIES), per_template)  # forward
    vocab = Vocabulary.from_names(QUERIES)
    assert encoder.embed_vocabulary(vocab).template_embeddings is None
    full = encoder.embed_vocabulary(vocab, with_templates=True)
    assert torch.equal(full.template_embeddings, per_template)
    assert torch.equal(full.query_embeddings,
                       encoder.encode_queries(QUERIES))


# ----------------------------------------------------------- templates
def test_vild_templates():
    assert 'vild' in NAMED_TEMPLATES
    assert len(VILD_TEMPLATES) == 15 and len(set(VILD_TEMPLATES)) == 15
    vild = load_templates('vild')
    assert [t('cat') for t in vild][:2] == ['a photo of a cat.',
                                            'a photo of a small cat.']
    assert vild[-1]('cat') == 'This is one cat in the scene.'
    assert len(load_templates('openai')) == 80
    assert len(build(templates='vild').templates) == 15


def test_template_lists_and_files(tmp_path):
    path = tmp_path / 'mine.txt'
    path.write_text('\n'.join(TEMPLATES[:2]) + '\n', encoding='utf-8')
    from_file, from_list = build(templates=str(path)), build(
        templates=TEMPLATES[:2])
    with torch.no_grad():
        assert torch.equal(from_file.encode_queries(QUERIES),
                           from_list.encode_queries(QUERIES))
    # equal prompts, equal cache identity, whatever their origin
    vocab = Vocabulary.from_names(QUERIES)
    assert from_file.cache_key(vocab, False) == from_list.cache_key(vocab,
                                                                    False)


# ----------------------------------------------------- freeze, gradients
def _trainable_names(encoder, policy, patterns):
    """The parameters each policy trains, listed from the names alone."""
    names = [n for n, _ in encoder.named_parameters()]
    if policy == 'none':
        return {n for n in names if n != 'logit_scale'}
    if policy == 'attn_qv':  # q and v parts of every split in-projection
        return {n for n in names if '.attn.parametrizations.' in n
                and n.rsplit('.', 1)[1] in ('original0', 'original2')}
    return {n for n in names if n.split('.')[0] in patterns}


@pytest.mark.parametrize('policy, trainable', [
    ('none', ()), ('attn_qv', ()),
    ('all', ('ln_final.*', 'positional_embedding'))])
def test_gradients_reach_exactly_the_trainable_parameters(policy, trainable):
    encoder = build(freeze=policy, trainable=trainable)
    encoder.train()
    expected = _trainable_names(encoder, policy,
                                {p.split('.')[0] for p in trainable})
    assert expected
    assert {n for n, p in encoder.named_parameters()
            if p.requires_grad} == expected
    out = encoder(QUERIES)
    assert out.grad_fn is not None
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    for name, param in encoder.named_parameters():
        if name in expected:
            assert param.grad is not None and param.grad.abs().sum() > 0, \
                name
        else:
            assert param.grad is None, name


def test_gradients_equal_open_clip_gradients():
    """freeze='none': every tower gradient equals the one through open_clip's
    encode_text on the same weights (full context, query by query)."""
    encoder = build(freeze='none').train()
    weight = torch.linspace(-1, 1, len(QUERIES) * len(TEMPLATES) * 32)
    (encoder(QUERIES).flatten() * weight).sum().backward()
    model = clip_model()
    model.requires_grad_(True)
    tokens = tokenizer()([t.format(q) for q in QUERIES
                                     for t in TEMPLATES])
    emb = F.normalize(model.encode_text(tokens), dim=-1)
    (emb.flatten() * weight).sum().backward()
    expected = dict(model.named_parameters())
    # a weight gradient also sums over every prompt and position
    terms = 2 * text_terms(model) + len(tokens) * model.context_length
    for name, param in encoder.named_parameters():
        if name != 'logit_scale':
            assert_fp32_close(param.grad, expected[name].grad, terms)


def test_frozen_results_have_no_graph_and_are_cached():
    vocab = Vocabulary.from_names(QUERIES)
    frozen = build()
    first = frozen.embed_vocabulary(vocab)  # grad mode on, nothing trains
    assert first.query_embeddings.grad_fn is None
    assert frozen.encode_text(SENTENCES).grad_fn is None
    assert frozen.embed_vocabulary(vocab) is first
    trainable = build(freeze='none')
    a, b = trainable.embed_vocabulary(vocab), trainable.embed_vocabulary(
        vocab)
    assert a is not b and a.query_embeddings.grad_fn is not None
    assert not trainable._cache
    with torch.no_grad():
        c = trainable.embed_vocabulary(vocab)
        assert c.query_embeddings.grad_fn is None
        assert trainable.embed_vocabulary(vocab) is c


def test_train_keeps_frozen_parts_in_eval():
    encoder = build(freeze='attn_qv').train()
    assert encoder.training
    block = encoder.transformer.resblocks[0]
    assert block.training and block.attn.training
    for part in (encoder.token_embedding, encoder.ln_final, block.ln_1,
                 block.mlp):
        assert not part.training
    frozen = build().train()
    assert frozen.training
    assert not any(m.training for m in frozen.children())
    frozen.eval()
    assert not frozen.training


# --------------------------------------------------------------- cache
@pytest.mark.parametrize('optimizer', [
    lambda ps: torch.optim.SGD(ps, lr=0.5, foreach=False),
    lambda ps: torch.optim.AdamW(ps, lr=0.05, foreach=True)],
    ids=['sgd', 'adamw_foreach'])
def test_no_stale_cache_after_an_optimizer_step(optimizer):
    encoder = build(freeze='none').train()
    vocab = Vocabulary.from_names(QUERIES)
    with torch.no_grad():
        before = encoder.embed_vocabulary(vocab).query_embeddings
    step = optimizer([p for p in encoder.parameters() if p.requires_grad])
    out = encoder(QUERIES)  # unit rows: a weighted sum, not their norm
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    step.step()
    with torch.no_grad():
        after = encoder.embed_vocabulary(vocab).query_embeddings
    expected = direct_queries(clip_with_weights_of(encoder), QUERIES,
                              TEMPLATES)
    assert not torch.allclose(after, before, atol=1e-2)
    assert_fp32_close(after, expected, text_terms(encoder) + len(TEMPLATES))


def test_no_stale_cache_after_load_state_dict():
    encoder, other = build(), build(seed=1)
    vocab = Vocabulary.from_names(QUERIES)
    before = encoder.embed_vocabulary(vocab).query_embeddings
    encoder.load_state_dict(other.state_dict())
    after = encoder.embed_vocabulary(vocab).query_embeddings
    assert not torch.allclose(after, before, atol=1e-3)
    assert torch.equal(after, other.embed_vocabulary(vocab).query_embeddings)


def test_no_stale_cache_after_a_dtype_round_trip():
    encoder = build()
    vocab = Vocabulary.from_names(QUERIES)
    before = encoder.embed_vocabulary(vocab).query_embeddings
    encoder.to(torch.bfloat16)  # the weights are rounded to bf16
    assert encoder.dtype == torch.bfloat16
    in_bf16 = encoder.embed_vocabulary(vocab).query_embeddings
    assert in_bf16.dtype == torch.float32  # embeddings are always fp32
    encoder.to(torch.float32)
    after = encoder.embed_vocabulary(vocab).query_embeddings
    assert not torch.equal(after, before)
    assert_fp32_close(after, direct_queries(clip_with_weights_of(encoder),
                                            QUERIES, TEMPLATES),
                      text_terms(encoder) + len(TEMPLATES))


def test_cache_is_lru_per_vocabulary():
    encoder = build(cache_size=2)
    vocabs = [Vocabulary.from_names(names) for names in
              (['cat'], ['dog'], ['sky'])]
    first = [encoder.embed_vocabulary(v) for v in vocabs]
    assert len(encoder._cache) == 2
    assert encoder.embed_vocabulary(vocabs[2]) is first[2]
    assert encoder.embed_vocabulary(vocabs[0]) is not first[0]
    assert build(cache_size=0).embed_vocabulary(vocabs[0]) is not None


# ---------------------------------------------- CustomTextCLIP variant
@pytest.fixture(scope='module')
def custom_text_model_name(tmp_path_factory):
    """A tiny open_clip config with ``custom_text`` (a CustomTextCLIP with a
    TextTransformer as ``.text``), registered with open_clip."""
    import open_clip

    from mmseg_ovss.testing.tiny_clip import CONFIG_DIR
    name = 'ovss-test-custom-text'
    cfg = json.loads((CONFIG_DIR / f'{MODEL}.json').read_text())
    cfg['custom_text'] = True
    folder = tmp_path_factory.mktemp('open_clip_configs')
    (folder / f'{name}.json').write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return name


@torch.no_grad()
def test_custom_text_clip_tower(custom_text_model_name):
    import open_clip
    name = custom_text_model_name
    model = clip_model(name=name)
    assert isinstance(model, open_clip.CustomTextCLIP)
    encoder = build(model_name=name)
    assert set(encoder.state_dict()) == {
        k for k in model.state_dict() if not k.startswith('visual.')}
    assert all(k.startswith('text.') for k in encoder.state_dict()
               if k != 'logit_scale')
    tokens = tokenizer(name)(SENTENCES)
    expected = F.normalize(model.encode_text(tokens), dim=-1)
    assert_fp32_close(encoder.encode_text(SENTENCES), expected,
                      text_terms(model.text))
    assert torch.equal(build(model_name=name, truncate_context=False)
                       .encode_text(SENTENCES), expected)
    assert_fp32_close(encoder.encode_queries(QUERIES),
                      direct_queries(model, QUERIES, TEMPLATES, name),
                      text_terms(model.text) + len(TEMPLATES))


# -------------------------------------------------------------- errors
def test_bad_configs_are_clear_errors():
    with pytest.raises(OVSSConfigError, match="unknown prompt templates 'x"):
        build(templates='xyz')
    with pytest.raises(OVSSConfigError, match="unknown freeze policy 'few'"):
        build(freeze='few')
    with pytest.raises(OVSSConfigError, match="'nothing.*' matches no"):
        build(trainable=['nothing.*'])
    with pytest.raises(OVSSConfigError, match='batch_size=0'):
        build(batch_size=0)
    with pytest.raises(OVSSConfigError, match='cache_size=-1'):
        build(cache_size=-1)


def test_empty_or_wrong_vocabulary_is_a_clear_error(frozen):
    with pytest.raises(OVSSConfigError, match='empty vocabulary'):
        frozen.encode_queries([])
    with pytest.raises(OVSSConfigError, match='empty vocabulary'):
        frozen([])
    with pytest.raises(OVSSConfigError, match='at least one sentence'):
        frozen.encode_text([])
    with pytest.raises(OVSSConfigError, match='got list'):
        frozen.embed_vocabulary(['cat'])
    with pytest.raises(OVSSConfigError, match='empty'):
        Vocabulary.from_names([])

