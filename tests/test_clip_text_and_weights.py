"""Vocabulary parsing, prompt ensembling, caching and weight loading."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

import mmseg_ovss  # noqa: F401  (registers the modules)
from mmseg_ovss.clip.loading import build_clip_model
from mmseg_ovss.clip.templates import load_templates
from mmseg_ovss.clip.vocabulary import Vocabulary
from mmseg_ovss.testing.tiny_clip import build_tiny_clip
from mmseg_ovss.utils.errors import (OVSSConfigError, OVSSDataError,
                                     OVSSWeightsError)

MODEL = 'ovss-tiny-ViT-16'
CLASS_FILES = sorted(
    (Path(__file__).resolve().parents[1] / 'data/class_names').rglob('*.txt'))
# shipped files with a synonym on two lines (see docs/datasets.md)
SHARED = {'coco_object.txt': "'bed'", 'proxyclip_coco_object.txt': "'bed'",
          'ade847.txt': "'screen'"}


def text_tolerance(magnitude: float = 1.0) -> float:
    """fp32 rounding of the tiny 2-layer, width-32 text tower: an output
    sums over at most 77 tokens + 4 * 32 MLP channels in each layer."""
    return (77 + 4 * 32) * 2 * torch.finfo(torch.float32).eps * magnitude


@pytest.fixture(scope='module')
def encoder():
    return MODELS.build(dict(
        type='OpenCLIPTextEncoder', model_name=MODEL, random_init=True,
        templates=['a photo of a {}.', 'art of the {}.']))


@pytest.fixture(scope='module')
def clip_model(encoder):
    """A whole open_clip CLIP (another seed) loaded with the encoder's text
    weights: its own ``encode_text`` is the direct computation."""
    model = build_clip_model(MODEL, pretrained=None, random_init=True,
                             seed=1)
    result = model.load_state_dict(encoder.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith('visual.') for k in result.missing_keys)
    return model


def test_vocabulary_synonyms_and_errors(tmp_path):
    vocab = Vocabulary.from_names(['sky, wall', 'person, person in shirt',
                                   ['cat']], background_class=0)
    assert vocab.class_names == ['sky', 'person', 'cat']
    assert vocab.queries == ['sky', 'wall', 'person', 'person in shirt',
                             'cat']
    assert vocab.query_to_class == [0, 0, 1, 1, 2]
    with pytest.raises(OVSSConfigError, match='empty'):
        Vocabulary.from_names([])
    with pytest.raises(OVSSConfigError, match='duplicate class'):
        Vocabulary.from_names(['cat', 'dog', 'Cat'])
    with pytest.raises(OVSSConfigError, match='twice'):
        Vocabulary.from_names(['cat, cat'])
    with pytest.raises(OVSSConfigError, match='empty synonym'):
        Vocabulary.from_names(['cat', 'dog, '])
    with pytest.raises(OVSSConfigError, match='list of class names'):
        Vocabulary.from_names('cat')
    with pytest.raises(OVSSDataError, match='class-name file'):
        Vocabulary.from_file(tmp_path / 'missing.txt')
    with pytest.raises(OVSSDataError, match='is a folder'):
        Vocabulary.from_file(tmp_path)
    # a synonym of two classes is an error (the later one could never win)
    with pytest.raises(OVSSConfigError, match="'bed' is on class 0"):
        Vocabulary.from_names(['sky, bed', 'bed'])


def _class_file_case(path):
    if path.name in SHARED:
        return pytest.param(path, marks=pytest.mark.xfail(
            strict=True, raises=OVSSConfigError,
            reason=f'{SHARED[path.name]} is on two lines of the file'))
    return path


@pytest.mark.parametrize('path', [_class_file_case(p) for p in CLASS_FILES],
                         ids=lambda p: f'{p.parent.name}/{p.name}')
def test_repository_class_name_files_parse(path):
    lines = path.read_text(encoding='utf-8').splitlines()
    vocab = Vocabulary.from_file(path)
    assert vocab.num_classes == len(lines)
    assert [', '.join(names) for names in vocab.synonyms] == lines


def test_templates():
    assert len(load_templates('openai')) == 80
    assert load_templates('openai')[0]('cat') == 'a bad photo of a cat.'
    assert load_templates('single')[0]('cat') == 'a photo of a cat.'
    with pytest.raises(OVSSConfigError, match='exactly one'):
        load_templates(['a photo'])
    with pytest.raises(OVSSConfigError, match='unknown prompt templates'):
        load_templates('fancy')


@torch.no_grad()
def test_prompt_ensemble_matches_direct_computation(encoder, clip_model):
    vocab = Vocabulary.from_names(['sky, wall', 'cat'], background_class=0)
    emb = encoder(vocab)
    model, tokenizer = clip_model, encoder.tokenizer
    rows = []
    for query in ['sky', 'wall', 'cat']:
        tokens = tokenizer([f'a photo of a {query}.', f'art of the {query}.'])
        per_prompt = F.normalize(model.encode_text(tokens), dim=-1)
        rows.append(F.normalize(per_prompt.mean(0), dim=-1))
    tol = text_tolerance()  # unit-norm rows
    torch.testing.assert_close(emb.query_embeddings, torch.stack(rows),
                               rtol=tol, atol=tol)
    assert emb.query_to_class.tolist() == [0, 0, 1]
    assert emb.class_names == ['sky', 'cat'] and emb.background_class == 0
    raw = emb.encode_text(['a cat on a mat'])
    torch.testing.assert_close(raw, F.normalize(model.encode_text(
        tokenizer(['a cat on a mat'])), dim=-1), rtol=tol, atol=tol)
    assert encoder(vocab) is emb  # cached per (model, vocabulary, templates)


def test_local_checkpoint_roundtrip(tmp_path):
    source = build_tiny_clip(MODEL, seed=3)
    path = tmp_path / 'tiny.pt'
    torch.save(source.state_dict(), path)
    loaded = build_clip_model(MODEL, pretrained=None, checkpoint=str(path))
    for (name, a), (_, b) in zip(source.state_dict().items(),
                                 loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(OVSSWeightsError, match='does not exist'):
        build_clip_model(MODEL, checkpoint=str(tmp_path / 'missing.pt'))


def test_weight_errors_name_the_fix(monkeypatch):
    with pytest.raises(OVSSWeightsError, match='random_init'):
        build_clip_model(MODEL, pretrained=None)
    with pytest.raises(OVSSConfigError, match='unknown open_clip model'):
        build_clip_model('ViT-Q-99', random_init=True)
    with pytest.raises(OVSSConfigError, match='unknown pretrained tag'):
        build_clip_model(MODEL, pretrained='openai')
    with pytest.raises(OVSSConfigError, match='precision'):
        build_clip_model(MODEL, random_init=True, precision='int3')

    import open_clip.factory

    def offline(*args, **kwargs):  # what an offline machine reports
        raise RuntimeError('Cannot reach the hub (offline)')

    monkeypatch.setattr(open_clip.factory, 'download_pretrained', offline)
    with pytest.raises(OVSSWeightsError, match='checkpoint=/path'):
        build_clip_model('ViT-B-16', pretrained='openai')


def test_random_init_half_precision_builds():
    model = build_clip_model(MODEL, random_init=True, precision='bf16')
    assert model.visual.conv1.weight.dtype == torch.bfloat16


def test_template_file_and_descriptions(encoder, clip_model, tmp_path):
    path = tmp_path / 'mine.txt'
    path.write_text('a photo of the {}.\n\nitap of a {}.\n')
    templates = load_templates(str(path))
    assert [t('cat') for t in templates] == ['a photo of the cat.',
                                             'itap of a cat.']
    descriptions = {'cat': ['a small furry pet.', 'it purrs.'],
                    'dog': ['it barks.']}
    emb = encoder.encode_descriptions(descriptions, ['dog', 'cat'])
    with torch.no_grad():  # open_clip's own text tower, full context
        direct = F.normalize(clip_model.encode_text(
            encoder.tokenizer(descriptions['cat'])), dim=-1)
    expected = F.normalize(direct[0] + direct[1], dim=0)
    tol = text_tolerance()
    torch.testing.assert_close(emb[1], expected, rtol=tol, atol=tol)
    with pytest.raises(OVSSDataError, match='no description sentences'):
        encoder.encode_descriptions(descriptions, ['bird'])


@torch.no_grad()
def test_truncated_context_equals_full_text_tower(encoder, clip_model):
    sentences = ['a photo of a cat.', 'a very long sentence about a small '
                 'grey cat sitting on a red mat in the sun.', 'dog']
    tokens = encoder.tokenizer(sentences)
    full = clip_model.encode_text(tokens)
    torch.testing.assert_close(
        encoder._encode_tokens(tokens), full, rtol=text_tolerance(),
        atol=text_tolerance(float(full.abs().max())))
