"""FreeCP descriptions: shipped files, loading, fallbacks, generator tool."""
import json
import threading
import warnings
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch

from mmseg_ovss.clip.text_encoder import CLIPTextEncoder, build_tokenizer
from mmseg_ovss.clip.vocabulary import Vocabulary
from mmseg_ovss.freecp.descriptions import (description_class_embeddings,
                                            load_descriptions,
                                            match_descriptions,
                                            template_class_embeddings)
from mmseg_ovss.testing.tiny_clip import build_tiny_clip
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


@pytest.mark.parametrize('names,vocab', CLASS_FILES, ids=lambda x: str(x))
def test_shipped_descriptions_cover_their_vocabulary(names, vocab):
    table = load_descriptions(f'data/descriptions/{vocab}.json')
    lines = (REPO / f'data/class_names/{names}.txt').read_text().splitlines()
    synonyms = [line.split(', ') for line in lines if line.strip()]
    matched = match_descriptions(synonyms, table)
    skip = UNDESCRIBED.get(vocab)
    if isinstance(skip, str):
        skip = [synonym[0] for synonym in synonyms].index(skip)
        assert matched[skip] is None
    for index, sentences in enumerate(matched):
        if index == skip:
            continue  # falls back to templates by design
        assert sentences is not None, synonyms[index]
        assert len(sentences) >= 15 and len(set(sentences)) == len(sentences)
    # descriptions are class-specific: no two classes share a sentence
    described = [s for i, s in enumerate(matched) if i != skip]
    every = [sentence for sentences in described for sentence in sentences]
    assert len(set(every)) == len(every)


@pytest.fixture(scope='module')
def text_encoder():
    model = build_tiny_clip(seed=0)
    return CLIPTextEncoder(model, build_tokenizer('ovss-tiny-ViT-16'),
                           model_key='tiny', templates=['a photo of a {}.'])


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(OVSSDataError, match='generate_descriptions'):
        load_descriptions(tmp_path / 'nope.json')
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'cat': 'not a list'}))
    with pytest.raises(OVSSDataError, match='list of non-empty'):
        load_descriptions(bad)


def test_uncovered_class_falls_back_to_template(text_encoder):
    vocab = text_encoder(Vocabulary((('cat', 'kitty'), ('dog', ), ('yak', )),
                                    None))
    table = {'Kitty': ['A small furry pet.', 'It purrs.'],
             'dog': ['A loyal animal that barks.']}
    with pytest.warns(UserWarning, match=r"\['yak'\]"):
        emb, missing = description_class_embeddings(vocab, table)
    assert missing == ['yak']
    templates = template_class_embeddings(vocab)
    torch.testing.assert_close(emb[2], templates[2])
    direct = text_encoder.encode_text(table['Kitty'])
    expect = torch.nn.functional.normalize(direct.mean(0), dim=0)
    torch.testing.assert_close(emb[0], expect)
    assert not torch.allclose(emb[1], templates[1])
    # only the requested classes are described; others stay silent
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        emb2, missing2 = description_class_embeddings(vocab, table, [0, 1])
    assert missing2 == [] and torch.equal(emb2[2], templates[2])


class _ChatHandler(BaseHTTPRequestHandler):
    """A local OpenAI-compatible endpoint that answers from the prompt."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        prompt = body['messages'][-1]['content']
        self.server.prompts.append(prompt)
        name = prompt.split(' a ')[1].split(' ')[0] if ' a ' in prompt else ''
        if 'zebra' in prompt:
            answer = 'ok'  # unusable: too short
        else:
            kind = len(self.server.prompts) % 7
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
    try:
        names = tmp_path / 'classes.txt'
        names.write_text('sky, wall, tree, wood, grass, road\ncat\nzebra\n')
        out = tmp_path / 'desc.json'
        with pytest.warns(UserWarning, match="'zebra'"):
            table = run_tool('generate_descriptions', [
                names, out, '--api-base',
                f'http://127.0.0.1:{server.server_port}/v1', '--answers', 2])
    finally:
        server.shutdown()
    assert list(table) == ['cat']            # background line skipped
    assert len(server.prompts) == 2 * 3 * 2  # 3 instructions x 2 answers
    assert all(s.startswith('A cat answer') and s.endswith('.')
               for s in table['cat'])
    assert load_descriptions(out) == table
