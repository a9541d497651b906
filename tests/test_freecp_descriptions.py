"""FreeCP descriptions: shipped files, loading, fallbacks, generator tool."""
import json
import threading
import warnings
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

import mmseg_ovss  # noqa: F401  (registers the modules)
from mmseg_ovss.clip.loading import build_clip_model
from mmseg_ovss.clip.vocabulary import Vocabulary
from mmseg_ovss.freecp.descriptions import (description_class_embeddings,
                                            load_descriptions,
                                            match_descriptions,
                                            template_class_embeddings)
from mmseg_ovss.testing.tools import run_tool
from mmseg_ovss.utils.errors import OVSSDataError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ('voc21', 'voc20', 'pc60', 'pc59', 'pc459', 'coco_object',
           'coco_stuff171', 'ade150', 'cityscapes')
# classes left to their templates on purpose: the background words of
# VOC21/PC60/COCO-Object and PC-459's 'unknown'
UNDESCRIBED = {'voc21': 0, 'pc60': 0, 'coco_object': 0, 'pc459': 'unknown'}


# class-name files -> the description file of their benchmark (the
# reference files spell names as the baselines' repositories do)
CLASS_FILES = [(v, v) for v in SHIPPED] + [
    (f'reference/{p}{v}', v) for p, v in (
        ('', 'ade150'), ('', 'coco_stuff171'), ('clearclip_', 'voc21'),
        ('clearclip_', 'voc20'), ('clearclip_', 'coco_object'),
        ('proxyclip_', 'voc21'), ('proxyclip_', 'voc20'),
        ('proxyclip_', 'coco_object'))]


# the connectives of the mechanical re-phrasings removed from the files
FILLER = ('In a photo,', 'At first glance,', 'Up close,',
          'A detail that tells', 'In a typical scene,', 'In many pictures,')


@pytest.mark.parametrize('names,vocab', CLASS_FILES, ids=lambda x: str(x))
def test_shipped_descriptions_cover_their_vocabulary(names, vocab):
    table = load_descriptions(f'data/descriptions/{vocab}.json')
    lines = (REPO / f'data/class_names/{names}.txt').read_text().splitlines()
    synonyms = [line.split(', ') for line in lines if line.strip()]
    skip = UNDESCRIBED.get(vocab)
    if isinstance(skip, str):
        skip = [synonym[0] for synonym in synonyms].index(skip)
        matched = match_descriptions(synonyms, table)
        assert matched[skip] is None
    else:  # as the head: the background words are not matched
        matched = match_descriptions(synonyms, table, [
            i for i in range(len(synonyms)) if i != skip])
    # no entry repeats a sentence (every sentence counts when averaged)
    assert all(len(set(s)) == len(s) for s in table.values())
    owners = {}
    for index, sentences in enumerate(matched):
        if index == skip:
            continue  # falls back to templates by design
        assert sentences is not None, synonyms[index]
        # 9 distinct facts for most classes (3 on appearance, 3 on parts, 3
        # on context), 15 for PC-459's own classes (data/descriptions/
        # README.md); no sentence re-phrases or joins others of its class
        assert len(set(sentences)) >= 9
        for a in sentences:
            assert not a.startswith(FILLER), (synonyms[index], a)
            for b in sentences:
                tail = ' '.join(b.rstrip('.').split()[-8:])
                assert a == b or tail not in a, (synonyms[index], a, b)
        # two entries of one class (VOC's "television monitor" and
        # "tvmonitor") hold the same list: each sentence counts as often
        counts = [sentences.count(x) for x in sentences]
        assert len(set(counts)) == 1, synonyms[index]
        for sentence in sentences:
            owners.setdefault(sentence, set()).add(index)
    # descriptions are class-specific: no two classes share a sentence
    assert all(len(classes) == 1 for classes in owners.values())


@pytest.fixture(scope='module')
def text_encoder():
    return MODELS.build(dict(
        type='OpenCLIPTextEncoder', model_name='ovss-tiny-ViT-16',
        random_init=True, templates=['a photo of a {}.']))


@pytest.fixture(scope='module')
def clip_model(text_encoder):
    """A whole open_clip CLIP (another seed) loaded with the encoder's text
    weights: its own ``encode_text`` is the direct computation."""
    model = build_clip_model('ovss-tiny-ViT-16', pretrained=None,
                             random_init=True, seed=1)
    result = model.load_state_dict(text_encoder.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith('visual.') for k in result.missing_keys)
    return model


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(OVSSDataError, match='generate_descriptions'):
        load_descriptions(tmp_path / 'nope.json')
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'cat': 'not a list'}))
    with pytest.raises(OVSSDataError, match='list of non-empty'):
        load_descriptions(bad)


def test_uncovered_class_falls_back_to_template(text_encoder, clip_model):
    vocab = text_encoder(Vocabulary((('cat', 'kitty'), ('dog', ), ('yak', )),
                                    None))
    table = {'Kitty': ['A small furry pet.', 'It purrs.'],
             'dog': ['A loyal animal that barks.']}
    with pytest.warns(UserWarning, match=r"\['yak'\]"):
        emb, missing = description_class_embeddings(vocab, table)
    assert missing == ['yak']
    templates = template_class_embeddings(vocab)
    torch.testing.assert_close(emb[2], templates[2], rtol=0, atol=0)
    with torch.no_grad():  # open_clip's own text tower, full context
        direct = F.normalize(clip_model.encode_text(
            text_encoder.tokenizer(table['Kitty'])), dim=-1)
    expect = F.normalize(direct[0] + direct[1], dim=0)
    # fp32, unit-norm rows; each output of the 2-layer width-32 tower sums
    # over at most 77 tokens + 4 * 32 MLP channels per layer
    tol = (77 + 4 * 32) * 2 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(emb[0], expect, rtol=tol, atol=tol)
    assert not torch.allclose(emb[1], templates[1])
    # only the requested classes are described; others stay silent
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        emb2, missing2 = description_class_embeddings(vocab, table, [0, 1])
    assert missing2 == [] and torch.equal(emb2[2], templates[2])


class _ChatHandler(BaseHTTPRequestHandler):
    """A local OpenAI-compatible endpoint that answers from the prompt;
    every other answer repeats one."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        prompt = body['messages'][-1]['content']
        self.server.prompts.append(prompt)
        name = prompt.split(' a ')[1].split(' ')[0] if ' a ' in prompt else ''
        if 'zebra' in prompt:
            answer = 'ok'  # unusable: too short
        else:
            kind = len(self.server.prompts) % 2
            answer = f'1. A {name} answer number {kind} about its looks.\nmore'
        reply = json.dumps({'choices': [{'message': {'content': answer}}]})
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, *args):
        pass


def test_generate_descriptions_tool_with_openai_endpoint(tmp_path):
    server = HTTPServer(('127.0.0.1', 0), _ChatHandler)
    server.prompts = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api = ['--api-base', f'http://127.0.0.1:{server.server_port}/v1']
    try:
        names = tmp_path / 'classes.txt'  # saved with a byte-order mark
        names.write_text('\ufeffsky, wall, tree, wood, grass, road\ncat\n'
                         'zebra\n', encoding='utf-8')
        out = tmp_path / 'desc.json'
        with pytest.warns(UserWarning, match="'zebra'"):
            table = run_tool('generate_descriptions', [
                names, out, *api, '--answers', 2])
        assert len(server.prompts) == 2 * 3 * 2  # 3 instructions x 2
        named = tmp_path / 'named.txt'  # a class named "background"
        named.write_text('cat\n Background \n')
        unique = run_tool('generate_descriptions', [
            named, tmp_path / 'unique.json', *api, '--answers', 2,
            '--unique'])
    finally:
        server.shutdown()
    assert list(table) == ['cat']            # background line skipped
    # every answer is kept (the paper averages all): 6, two distinct
    assert len(table['cat']) == 6 and len(set(table['cat'])) == 2
    assert all(s.startswith('A cat answer') and s.endswith('.')
               for s in table['cat'])
    assert load_descriptions(out) == table
    assert list(unique) == ['cat'] and sorted(unique['cat']) == sorted(
        set(table['cat']))
