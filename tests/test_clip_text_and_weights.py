"""Vocabulary parsing, prompt ensembling, caching and weight loading."""
import pytest
import torch
import torch.nn.functional as F

from mmseg_ovss.clip.loading import build_clip_model
from mmseg_ovss.clip.templates import load_templates
from mmseg_ovss.clip.text_encoder import CLIPTextEncoder, build_tokenizer
from mmseg_ovss.clip.vocabulary import Vocabulary
from mmseg_ovss.testing.tiny_clip import build_tiny_clip
from mmseg_ovss.utils.errors import (OVSSConfigError, OVSSDataError,
                                     OVSSWeightsError)
from mmseg_ovss.utils.paths import resolve_data_path

MODEL = 'ovss-tiny-ViT-16'


@pytest.fixture(scope='module')
def encoder():
    model = build_tiny_clip(MODEL)
    return CLIPTextEncoder(model, build_tokenizer(MODEL), model_key='tiny',
                           templates=['a photo of a {}.', 'art of the {}.'])


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
    with pytest.raises(OVSSConfigError, match='empty name'):
        Vocabulary.from_names(['cat', 'dog, '])
    with pytest.raises(OVSSConfigError, match='list of class names'):
        Vocabulary.from_names('cat')
    with pytest.raises(OVSSDataError, match='class-name file'):
        Vocabulary.from_file(tmp_path / 'missing.txt')
    # a shared synonym between different classes is allowed (SCLIP files)
    assert Vocabulary.from_names(['sky, bed', 'bed']).num_classes == 2


def test_repository_class_name_files_parse():
    for name in ('voc21', 'pc60', 'coco_object', 'voc20', 'cityscapes',
                 'pc59', 'ade150', 'coco_stuff171'):
        path = resolve_data_path(f'data/class_names/{name}.txt')
        assert Vocabulary.from_file(path).num_classes > 0


def test_templates():
    assert len(load_templates('openai')) == 80
    assert load_templates('openai')[0]('cat') == 'a bad photo of a cat.'
    assert load_templates('single')[0]('cat') == 'a photo of a cat.'
    with pytest.raises(OVSSConfigError, match='exactly one'):
        load_templates(['a photo'])
    with pytest.raises(OVSSConfigError, match='unknown prompt templates'):
        load_templates('fancy')


@torch.no_grad()
def test_prompt_ensemble_matches_direct_computation(encoder):
    vocab = Vocabulary.from_names(['sky, wall', 'cat'], background_class=0)
    emb = encoder(vocab)
    model, tokenizer = encoder.clip_model, encoder.tokenizer
    rows = []
    for query in ['sky', 'wall', 'cat']:
        tokens = tokenizer([f'a photo of a {query}.', f'art of the {query}.'])
        per_prompt = F.normalize(model.encode_text(tokens), dim=-1)
        rows.append(F.normalize(per_prompt.mean(0), dim=-1))
    torch.testing.assert_close(emb.query_embeddings, torch.stack(rows))
    assert emb.query_to_class.tolist() == [0, 0, 1]
    assert emb.class_names == ['sky', 'cat'] and emb.background_class == 0
    raw = emb.encode_text(['a cat on a mat'])
    torch.testing.assert_close(raw, F.normalize(model.encode_text(
        tokenizer(['a cat on a mat'])), dim=-1))
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


def test_template_file_and_descriptions(encoder, tmp_path):
    path = tmp_path / 'mine.txt'
    path.write_text('a photo of the {}.\n\nitap of a {}.\n')
    templates = load_templates(str(path))
    assert [t('cat') for t in templates] == ['a photo of the cat.',
                                             'itap of a cat.']
    descriptions = {'cat': ['a small furry pet.', 'it purrs.'],
                    'dog': ['it barks.']}
    emb = encoder.encode_descriptions(descriptions, ['dog', 'cat'])
    expected = F.normalize(encoder.encode_text(descriptions['cat']).mean(0),
                           dim=0)
    torch.testing.assert_close(emb[1], expected)
    with pytest.raises(OVSSDataError, match='no description sentences'):
        encoder.encode_descriptions(descriptions, ['bird'])


@torch.no_grad()
def test_truncated_context_equals_full_text_tower(encoder):
    sentences = ['a photo of a cat.', 'a very long sentence about a small '
                 'grey cat sitting on a red mat in the sun.', 'dog']
    tokens = encoder.tokenizer(sentences)
    full = encoder.clip_model.encode_text(tokens)
    torch.testing.assert_close(encoder._encode_tokens(tokens), full,
                               rtol=1e-5, atol=1e-6)
