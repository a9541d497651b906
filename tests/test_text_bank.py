"""The text-embedding bank on disk (mmseg_ovss.clip.text_bank).

A second text encoder with the same weights reads every sentence back
instead of running the tower; other weights, a damaged file or a trainable
tower never get stale rows.
"""
import pytest
import torch

from mmseg_ovss.clip.text_bank import (BANK_ENV, DEFAULT_BANK_DIR,
                                       resolve_bank_dir, weights_digest)
from mmseg_ovss.models.text_encoders.open_clip_text_encoder import \
    OpenCLIPTextEncoder
from mmseg_ovss.testing.tiny_clip import register_tiny_clip_models

TEMPLATES = ['a photo of a {}.', 'a drawing of a {}.', 'a {} in the wild.']
NAMES = ['cat', 'dog', 'potted plant', 'sky']


def _encoder(bank, seed=0, **kwargs):
    register_tiny_clip_models()
    return OpenCLIPTextEncoder(model_name='ovss-tiny-ViT-16',
                               random_init=True, seed=seed,
                               templates=TEMPLATES, text_bank=bank,
                               batch_size=5, **kwargs)


def _count_tower_calls(encoder, monkeypatch):
    calls = []
    original = encoder._encode_batch

    def counting(sentences):
        calls.extend(sentences)
        return original(sentences)
    monkeypatch.setattr(encoder, '_encode_batch', counting)
    return calls


def test_second_start_reads_every_sentence_back(tmp_path, monkeypatch):
    first = _encoder(tmp_path)
    calls = _count_tower_calls(first, monkeypatch)
    built = first.encode_templates(NAMES)
    assert len(calls) == len(NAMES) * len(TEMPLATES)
    (bank_file, ) = tmp_path.glob('*.pt')
    assert bank_file.name.endswith('-float32-cpu.pt')

    second = _encoder(tmp_path)
    calls = _count_tower_calls(second, monkeypatch)
    read = second.encode_templates(NAMES)
    assert calls == []
    assert torch.equal(read, built)

    # equal to the tower's own output, up to the rounding that a different
    # batch composition (and context length) can give: a few ulps of a
    # normalised fp32 vector
    plain = _encoder(None).encode_templates(NAMES)
    tol = 64 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(read, plain, atol=tol, rtol=0)


def test_only_new_sentences_are_encoded(tmp_path, monkeypatch):
    _encoder(tmp_path).encode_templates(NAMES[:2])
    encoder = _encoder(tmp_path)
    calls = _count_tower_calls(encoder, monkeypatch)
    out = encoder.encode_templates(NAMES)
    assert sorted(calls) == sorted(t.format(n) for n in NAMES[2:]
                                   for t in TEMPLATES)
    assert out.shape[:2] == (len(NAMES), len(TEMPLATES))
    # a repeated sentence is encoded once
    calls.clear()
    encoder.encode_text(['a new sentence', 'a new sentence'])
    assert calls == ['a new sentence']


def test_other_weights_get_their_own_rows(tmp_path, monkeypatch):
    a = _encoder(tmp_path, seed=0)
    b = _encoder(tmp_path, seed=1)
    assert weights_digest(a.text_tower) != weights_digest(b.text_tower)
    a.encode_text(['a cat'])
    calls = _count_tower_calls(b, monkeypatch)
    b.encode_text(['a cat'])
    assert calls == ['a cat']
    assert len(list(tmp_path.glob('*.pt'))) == 2

    # an in-place change of the weights (load_state_dict) changes the digest
    calls.clear()
    b.load_state_dict(a.state_dict())
    before = b.encode_text(['a cat'])
    assert calls == []  # now a's rows
    torch.testing.assert_close(before, a.encode_text(['a cat']), atol=0,
                               rtol=0)


def test_a_damaged_bank_file_is_rebuilt(tmp_path, monkeypatch, capsys):
    _encoder(tmp_path).encode_text(['a cat'])
    (bank_file, ) = tmp_path.glob('*.pt')
    bank_file.write_bytes(b'not a checkpoint')
    encoder = _encoder(tmp_path)
    calls = _count_tower_calls(encoder, monkeypatch)
    encoder.encode_text(['a cat'])
    assert calls == ['a cat']
    assert 'ignoring unreadable' in capsys.readouterr().err
    assert torch.load(bank_file, weights_only=True)['sentences'] == ['a cat']


def test_a_trainable_tower_is_not_banked(tmp_path):
    encoder = _encoder(tmp_path, freeze='none')
    out = encoder.encode_text(['a cat'])
    assert out.requires_grad
    assert not list(tmp_path.glob('*.pt'))
    with torch.no_grad():  # no gradients: the frozen path, banked
        encoder.encode_text(['a cat'])
    assert len(list(tmp_path.glob('*.pt'))) == 1


def test_bank_folder_setting(monkeypatch, tmp_path):
    monkeypatch.delenv(BANK_ENV, raising=False)
    assert resolve_bank_dir('auto') == DEFAULT_BANK_DIR.expanduser()
    monkeypatch.setenv(BANK_ENV, 'off')
    assert resolve_bank_dir('auto') is None
    monkeypatch.setenv(BANK_ENV, str(tmp_path))
    assert resolve_bank_dir('auto') == tmp_path
    assert resolve_bank_dir(None) is None
    with pytest.raises(Exception, match='text_bank'):
        resolve_bank_dir(3)
