"""Vocabulary and description files: encodings, odd lines, shared
synonyms, the background rule and names in any script."""
import json
import unicodedata
import warnings

import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import mmseg_ovss  # noqa: F401 (registers the models)
from mmseg_ovss.blip.class_source import ClassSource
from mmseg_ovss.clip.loading import build_clip_model
from mmseg_ovss.clip.templates import load_templates
from mmseg_ovss.clip.vocabulary import Vocabulary, find_background_class
from mmseg_ovss.freecp.descriptions import (description_class_embeddings,
                                            load_descriptions,
                                            match_descriptions)
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

MODEL = 'ovss-tiny-ViT-16'
STUFF = ('sky, wall, tree, wood, grass, road, sea, river, mountain, sands, '
         'desk, bed, building, cloud, lamp, door, window, wardrobe, ceiling, '
         'shelf, curtain, stair, floor, hill, rail, fence')
NFC_CAFE = unicodedata.normalize('NFC', 'café')
NFD_CAFE = unicodedata.normalize('NFD', 'café')
init_default_scope('mmseg')


def write(path, text, encoding='utf-8'):
    path.write_bytes(text.encode(encoding))
    return path


# ------------------------------------------------------------- encodings
def test_bom_and_crlf_of_windows_notepad_are_not_part_of_names(tmp_path):
    # Notepad's "UTF-8 with BOM" and CRLF line ends
    path = write(tmp_path / 'mine.txt', '\ufeffbackground\r\ncat\r\ndog\r\n')
    vocab = Vocabulary.from_file(path)
    assert vocab.class_names == ['background', 'cat', 'dog']
    assert find_background_class(vocab.synonyms) == 0
    assert Vocabulary.from_file(path, background_class='auto') \
        .background_class == 0


def test_bom_file_gets_its_background_class_in_the_segmentor(tmp_path):
    path = write(tmp_path / 'mine.txt', '\ufeffbackground\ncat\ndog\n')
    model = MODELS.build(dict(
        type='CLIPDenseSegmentor',
        clip=dict(model_name=MODEL, random_init=True),
        text_encoder=dict(templates='single'),
        text=dict(class_names=str(path))))
    vocab = model.vocabulary_embeddings()
    assert vocab.class_names == ['background', 'cat', 'dog']
    assert vocab.background_class == 0


@pytest.mark.parametrize('read', [
    Vocabulary.from_file, load_descriptions, load_templates,
    lambda p: ClassSource('json', path=str(p))],
    ids=['class names', 'descriptions', 'templates', 'pnp class lists'])
def test_latin1_file_names_file_offset_and_fix(tmp_path, read):
    # 'caf\xe9' is Latin-1: byte 0xe9, at offset 12 on line 2, is no UTF-8
    path = write(tmp_path / 'latin1.txt', 'a {} cat\ncaf\xe9 {}\n', 'latin-1')
    with pytest.raises(OVSSDataError) as err:
        read(path)
    message = str(err.value)
    for part in (str(path), 'not UTF-8', '0xe9', 'offset 12', 'line 2',
                 'iconv'):
        assert part in message, (part, message)


def test_utf16_file_is_a_clear_error(tmp_path):
    # Notepad's "Unicode": UTF-16 LE with a byte-order mark
    path = write(tmp_path / 'u16.txt', '\ufeffcat\ndog\n', 'utf-16-le')
    with pytest.raises(OVSSDataError, match='UTF-16.*save it as UTF-8'):
        Vocabulary.from_file(path)
    no_bom = write(tmp_path / 'u16b.txt', 'cat\ndog\n', 'utf-16-le')
    with pytest.raises(OVSSDataError, match='NUL byte at offset 1'):
        Vocabulary.from_file(no_bom)


def test_template_and_description_files_with_bom(tmp_path):
    templates = write(tmp_path / 't.txt', '\ufeffa photo of a {}.\n')
    assert [t('cat') for t in load_templates(str(templates))] == [
        'a photo of a cat.']
    table = write(tmp_path / 'd.json',
                  '\ufeff' + json.dumps({'cat': ['It purrs.']}))
    assert load_descriptions(table) == {'cat': ['It purrs.']}


# ------------------------------------------------------------ odd lines
def test_empty_lines_stray_commas_and_spacing(tmp_path):
    cases = {
        'cat\n\ndog\n': 'line 2 is empty; every line is one class',
        'cat\n   \t\ndog\n': 'line 2 is empty',
        '\ncat\n': 'line 1 is empty',
        'cat\ndog,\n': "line 2 \\('dog, '\\) has an empty synonym: a stray",
        ', cat\n': 'line 1 .* stray comma',
        'cat,,kitty\n': 'two commas in a row',
        'cat\nCat \n': "line 2 \\('Cat'\\) repeats line 1",
        'cat, kitty\ndog\nKitty , cat\n': 'line 3 .* in another order, the '
                                          'same synonyms as line 1',
        'cat, Cat\n': "line 1 lists the synonym 'Cat' twice",
    }
    for text, message in cases.items():
        path = write(tmp_path / 'v.txt', text)
        with pytest.raises(OVSSConfigError, match=message) as err:
            Vocabulary.from_file(path)
        assert str(path) in str(err.value)
    # trailing empty lines are ignored; spaces around commas and runs of
    # spaces inside a name are not part of the name
    path = write(tmp_path / 'v.txt',
                 'cat ,kitty\n  person   in\tshirt , person \ndog\n\n \n')
    vocab = Vocabulary.from_file(path)
    assert vocab.synonyms == (('cat', 'kitty'),
                              ('person in shirt', 'person'), ('dog', ))


def test_list_vocabularies_name_the_class():
    with pytest.raises(OVSSConfigError, match='class 1 is empty'):
        Vocabulary.from_names(['cat', ' '])
    with pytest.raises(OVSSConfigError, match="class 1 \\('dog, '\\)"):
        Vocabulary.from_names(['cat', 'dog, '])
    with pytest.raises(OVSSConfigError, match='class 1 has a name that is '
                       'not a string'):
        Vocabulary.from_names(['cat', 7])
    with pytest.raises(OVSSConfigError, match='background_class True'):
        Vocabulary.from_names(['cat'], background_class=True)


# -------------------------------------------------------- shared synonyms
def test_synonym_on_two_lines_is_an_error_naming_both(tmp_path):
    # SCLIP's COCO-Object file: "bed" is a background word and a class
    path = write(tmp_path / 'object.txt', f'{STUFF}\nperson\nbed\n')
    with pytest.raises(OVSSConfigError) as err:
        Vocabulary.from_file(path)
    message = str(err.value)
    for part in (str(path), "'bed' is on line 1", 'and line 3',
                 'line 3 can never win', "shared_synonyms='allow'"):
        assert part in message, (part, message)
    # the same holds across case, spacing and Unicode normalisation
    with pytest.raises(OVSSConfigError, match=r"'CAFÉ' is on class 0 "
                       r"\('café, coffee shop'\) and class 1 "
                       r"\('CAFÉ, tea room'\)"):
        Vocabulary.from_names([f'{NFC_CAFE}, coffee shop',
                               f'{NFD_CAFE.upper()}, tea room'])
    with pytest.raises(OVSSConfigError, match="'Screen' is on class 0"):
        Vocabulary.from_names(['blind, screen', 'screen door,  Screen '])


def test_shared_synonyms_allowed_on_request_warn_about_losers(tmp_path):
    path = write(tmp_path / 'object.txt', f'{STUFF}\nperson\nbed\n')
    with pytest.warns(UserWarning, match=r"line 3 \('bed'\) can never win"):
        vocab = Vocabulary.from_file(path, shared_synonyms='allow')
    assert vocab.class_names == ['sky', 'person', 'bed']
    # a shared synonym that leaves both classes a chance: no warning
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        Vocabulary.from_names(['blind, screen', 'screen door, screen'],
                              shared_synonyms='allow')
    with pytest.raises(OVSSConfigError, match='shared_synonyms'):
        Vocabulary.from_names(['cat'], shared_synonyms='warn')
    # a repeated line is a class that can never win: allowed, with the
    # warning (an error by default: test_clip_text_and_weights.py)
    with pytest.warns(UserWarning, match=r"class 2 \('Cat'\) can never win"):
        vocab = Vocabulary.from_names(['cat', 'dog', 'Cat'],
                                      shared_synonyms='allow')
    assert vocab.query_to_class == [0, 1, 2]


# ------------------------------------------------------ background rule
@pytest.mark.parametrize('classes,dataset,expected', [
    (['background', 'cat'], None, 0),                 # PC60, ClearCLIP
    (['Background', 'cat'], None, 0),
    (['  BACKGROUND ', 'cat'], None, 0),
    (['background, sky', 'cat'], None, 0),            # a synonym
    (['cat', 'background'], None, 1),                 # the demo's rule
    ([STUFF, 'cat'], None, None),                     # stuff words alone
    ([STUFF, 'cat'], ['background', 'cat'], 0),       # VOC21 metainfo
    ([STUFF, 'cat'], [' Background ', 'cat'], 0),
    (['backgrounds', 'background wall', 'cat'], None, None),
    (['cat', 'dog'], None, None),
])
def test_background_class_forms_of_the_docs(classes, dataset, expected):
    vocab = Vocabulary.from_names(classes)
    assert find_background_class(vocab.synonyms, dataset) == expected
    if dataset is None:
        assert Vocabulary.from_names(classes, 'auto').background_class == \
            expected


@pytest.mark.parametrize('classes,dataset,expected', [
    (['cat', 'background'], None, 1),       # tools/demo.py --classes
    (['Background', 'cat'], None, 0),
    ([STUFF, 'cat'], [' Background ', 'cat'], 0),
    (['cat', 'dog'], None, None),
])
def test_segmentor_background_rule_is_the_documented_one(
        tmp_path, classes, dataset, expected):
    model = MODELS.build(dict(
        type='CLIPDenseSegmentor',
        clip=dict(model_name=MODEL, random_init=True),
        text_encoder=dict(templates='single')))
    if dataset is None:  # a vocabulary list (the demo's --classes)
        model.set_vocabulary(classes)
    else:  # a class-name file run on a dataset (VOC21 with SCLIP's file)
        path = write(tmp_path / 'names.txt', '\n'.join(classes) + '\n')
        model.set_vocabulary(class_names_file=str(path))
        model.set_dataset_classes(dataset)
    assert model.vocabulary().background_class == expected


def test_segmentor_reads_a_reference_file_with_shared_synonyms(tmp_path):
    path = write(tmp_path / 'ref.txt', 'sky, bed\ncat\nbed\n')
    cfg = dict(type='CLIPDenseSegmentor',
               clip=dict(model_name=MODEL, random_init=True),
               text_encoder=dict(templates='single'),
               text=dict(class_names=str(path), background_class=0))
    with pytest.raises(OVSSConfigError, match="'bed' is on line 1"):
        MODELS.build(cfg).vocabulary()
    cfg['text']['shared_synonyms'] = 'allow'
    with pytest.warns(UserWarning, match='can never win'):
        vocab = MODELS.build(cfg).vocabulary()
    assert vocab.class_names == ['sky', 'cat', 'bed']
    assert vocab.background_class == 0


def test_two_background_classes_are_an_error():
    vocab = Vocabulary.from_names(['background', 'cat'])
    with pytest.raises(OVSSConfigError, match=r'classes \[0, 1\]'):
        find_background_class(vocab.synonyms, ['sky', 'background'])


# --------------------------------------------------- names in any script
def test_descriptions_match_names_in_any_script_and_normalisation():
    table = {'猫': ['一只猫。'], '狗': ['一只狗。'], NFD_CAFE: ['A café.'],
             'Crème brûlée': ['A dessert.'], 'Chest-of-drawers': ['Drawers.']}
    synonyms = [('猫', ), ('狗', ), (NFC_CAFE, ),
                (unicodedata.normalize('NFD', 'crème brûlée'), ),
                ('chest of drawers', ), ('ｃａｔ', )]
    assert match_descriptions(synonyms, table) == [
        ['一只猫。'], ['一只狗。'], ['A café.'], ['A dessert.'], ['Drawers.'],
        None]


def test_description_name_clashes_are_errors(tmp_path):
    path = write(tmp_path / 'd.json', '{"cat": ["A."], "dog": ["B."], '
                 '"cat": ["C."]}')
    with pytest.raises(OVSSDataError, match="lists 'cat' twice"):
        load_descriptions(path)
    path = write(tmp_path / 'd.json', json.dumps(
        {'chest of drawers': ['A.'], 'Chest-Of-Drawers': ['B.']}))
    with pytest.raises(OVSSDataError, match="'chest of drawers' and "
                       "'Chest-Of-Drawers' name the same class"):
        load_descriptions(path)
    with pytest.raises(OVSSDataError, match="entry 'tvmonitor' matches "
                       'class 0'):
        match_descriptions([('tv monitor', ), ('tvmonitor', )],
                           {'tvmonitor': ['A screen.']})


def test_pnp_class_lists_match_names_in_any_script(tmp_path):
    path = write(tmp_path / 'lists.json', '\ufeff' + json.dumps(
        {'img1': [NFD_CAFE, ' Cat ', 2]}, ensure_ascii=False))
    source = ClassSource('json', path=str(path))
    sample = SegDataSample(metainfo=dict(img_path='/data/img1.jpg'))
    assert source(sample, [('cat', ), (NFC_CAFE, ), ('dog', )]) == [0, 1, 2]
    path = write(tmp_path / 'lists.json', '{"a": [0], "a": [1]}')
    with pytest.raises(OVSSDataError, match='lists "a" twice'):
        ClassSource('json', path=str(path))


# --------------------------------------------------------- repeats count
@pytest.fixture(scope='module')
def text_encoder():
    return MODELS.build(dict(type='OpenCLIPTextEncoder', model_name=MODEL,
                             random_init=True, templates='single'))


def direct_embeddings(encoder, sentences):
    """open_clip's own text tower (full context), normalised rows, of a
    whole CLIP (another seed) loaded with the encoder's text weights."""
    model = build_clip_model(MODEL, pretrained=None, random_init=True,
                             seed=1)
    result = model.load_state_dict(encoder.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith('visual.') for k in result.missing_keys)
    tokenizer = encoder.tokenizer
    with torch.no_grad():
        return F.normalize(model.encode_text(tokenizer(sentences)), dim=-1)


def text_tolerance(encoder) -> float:
    """fp32 rounding of the 2-layer, width-32 text tower: each output sums
    over at most 77 tokens + 4 * 32 MLP channels per layer, unit-norm rows;
    the tested code runs a shorter context and other batches."""
    n = (77 + 4 * 32) * 2
    return n * torch.finfo(torch.float32).eps


def test_every_sentence_counts_as_in_the_authors_code(tmp_path,
                                                      text_encoder):
    sentences = ['A small furry pet with whiskers.', 'It purrs.',
                 'A small furry pet with whiskers.']
    path = write(tmp_path / 'd.json', json.dumps({'cat': sentences,
                                                  'dog': ['It barks.']}))
    vocab = text_encoder(Vocabulary.from_names(['cat', 'dog']))
    a, b = direct_embeddings(text_encoder, sentences[:2])
    weighted = F.normalize((2 * a + b) / 3, dim=0)   # authors: all three
    unique = F.normalize((a + b) / 2, dim=0)
    tol = text_tolerance(text_encoder)
    assert (weighted - unique).abs().max() > 100 * tol  # tells them apart

    table = load_descriptions(path)
    assert table['cat'] == sentences
    emb, missing = description_class_embeddings(vocab, table)
    assert missing == []
    torch.testing.assert_close(emb[0], weighted, rtol=tol, atol=tol)

    for spec, kwargs in ((dict(path=str(path), deduplicate=True), {}),
                         (str(path), dict(deduplicate=True))):
        table = load_descriptions(spec, **kwargs)
        assert table['cat'] == sentences[:2]
        emb, _ = description_class_embeddings(vocab, table)
        torch.testing.assert_close(emb[0], unique, rtol=tol, atol=tol)
    with pytest.raises(OVSSConfigError, match='unknown keys'):
        load_descriptions(dict(path=str(path), dedup=True))


def test_head_takes_the_deduplicate_setting(tmp_path, text_encoder):
    sentences = ['A loyal animal that barks.', 'It barks.',
                 'A loyal animal that barks.']
    path = write(tmp_path / 'd.json', json.dumps({'dog': sentences,
                                                  'cat': ['It purrs.']}))
    vocab = text_encoder(Vocabulary.from_names(['background', 'dog', 'cat'],
                                               'auto'))
    a, b = direct_embeddings(text_encoder, sentences[:2])
    tol = text_tolerance(text_encoder)
    for deduplicate, expected in ((False, (2 * a + b) / 3),
                                  (True, (a + b) / 2)):
        head = MODELS.build(dict(
            type='FreeCPHead',
            descriptions=dict(path=str(path), deduplicate=deduplicate)))
        crop_text = head._text(vocab)[2]
        torch.testing.assert_close(crop_text[1], F.normalize(expected, dim=0),
                                   rtol=tol, atol=tol)
