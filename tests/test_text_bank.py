"""The text-embedding bank on disk (mmseg_ovss.clip.text_bank).

A second text encoder with the same weights reads every sentence back
instead of running the tower; other weights, a damaged file or a trainable
tower never get stale rows.
"""
import fcntl
import os

import pytest
import torch

from mmseg_ovss.clip import text_bank as text_bank_module
from mmseg_ovss.clip.text_bank import (BANK_ENV, DEFAULT_BANK_DIR,
                                       TextEmbeddingBank, encode_with_bank,
                                       resolve_bank_dir, weights_digest)
from mmseg_ovss.clip.vocabulary import Vocabulary
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


@pytest.mark.parametrize('freeze', ['none', 'attn_qv'])
def test_a_trainable_tower_is_not_banked(tmp_path, freeze):
    encoder = _encoder(tmp_path, freeze=freeze)
    out = encoder.encode_text(['a cat'])
    assert out.requires_grad
    assert not list(tmp_path.glob('*.pt'))
    # validation of a tower in training (no_grad): its rows change with
    # every step and would never be read again
    with torch.no_grad():
        encoder.encode_text(['a cat'])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('freeze', ['none', 'attn_qv'])
def test_a_trainable_tower_under_test_is_banked(tmp_path, freeze,
                                                monkeypatch):
    """A trained checkpoint evaluated (tools/test.py): its tower keeps the
    trainable flags of its freeze policy but never computes with
    gradients, so its rows are banked and read back."""
    encoder = _encoder(tmp_path, freeze=freeze)
    with torch.no_grad():
        first = encoder.encode_text(['a cat'])
    assert len(list(tmp_path.glob('*.pt'))) == 1
    again = _encoder(tmp_path, freeze=freeze)
    calls = _count_tower_calls(again, monkeypatch)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_text(['a cat']), first,
                                   atol=0, rtol=0)
    assert calls == []


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


def test_another_architecture_gets_its_own_rows(tmp_path, monkeypatch):
    """The same weights in a GELU and a QuickGELU tower, or pooled another
    way, compute other embeddings: they must not share rows."""
    sentences = ['a cat', 'a dog']
    gelu = _encoder(tmp_path, quick_gelu=False)
    quick = _encoder(tmp_path, quick_gelu=True)
    assert weights_digest(gelu.text_tower) == weights_digest(quick.text_tower)
    gelu.encode_text(sentences)
    calls = _count_tower_calls(quick, monkeypatch)
    banked = quick.encode_text(sentences)
    assert calls == sentences
    plain = _encoder(None, quick_gelu=True).encode_text(sentences)
    torch.testing.assert_close(banked, plain, atol=1e-6, rtol=0)

    # a non-tensor setting of the tower: pooling at the last token
    last = _encoder(tmp_path, quick_gelu=False)
    last.text_pool_type = 'last'
    calls = _count_tower_calls(last, monkeypatch)
    pooled = last.encode_text(sentences)
    assert calls == sentences
    expected = _encoder(None, quick_gelu=False)
    expected.text_pool_type = 'last'
    torch.testing.assert_close(pooled, expected.encode_text(sentences),
                               atol=1e-6, rtol=0)
    assert len(list(tmp_path.glob('*.pt'))) == 3


def test_another_template_list_shares_the_rows(tmp_path, monkeypatch):
    """A row is one sentence through the tower: the encoder's template list
    does not change it, so encoders of the same weights with other
    templates (SCLIP's 80, ZegCLIP's one) read one bank file."""
    sentences = ['a photo of a cat.', 'a photo of a dog.']
    _encoder(tmp_path).encode_text(sentences)
    register_tiny_clip_models()
    other = OpenCLIPTextEncoder(model_name='ovss-tiny-ViT-16',
                                random_init=True, seed=0,
                                templates=['a photo of a {}.'],
                                text_bank=tmp_path, batch_size=5)
    calls = _count_tower_calls(other, monkeypatch)
    other.encode_text(sentences)
    assert calls == []
    assert len(list(tmp_path.glob('*.pt'))) == 1


def test_autocast_rows_are_not_banked(tmp_path):
    """A frozen tower called under autocast (an amp step) stores float32
    rows: a later plain run reads the tower's fp32 output."""
    sentences = ['a cat', 'a dog']
    plain = _encoder(None).encode_text(sentences)
    encoder = _encoder(tmp_path)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        under_amp = encoder.encode_text(sentences)
    tol = 64 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(under_amp, plain, atol=tol, rtol=0)
    later = _encoder(tmp_path).encode_text(sentences)
    torch.testing.assert_close(later, plain, atol=tol, rtol=0)


def test_vocabulary_cache_key_holds_the_autocast_state():
    """Without a bank autocast changes the result: the in-memory cache must
    not hand an autocast result to a plain call."""
    vocab = Vocabulary.from_names(NAMES)
    encoder = _encoder(None)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        amp = encoder.embed_vocabulary(vocab).query_embeddings
    plain = encoder.embed_vocabulary(vocab).query_embeddings
    fresh = _encoder(None).embed_vocabulary(vocab).query_embeddings
    torch.testing.assert_close(plain, fresh, atol=0, rtol=0)
    assert (amp - plain).abs().max() > 1e-4  # bf16 rounding was there


def _random_rows(batch):
    return torch.nn.functional.normalize(torch.randn(len(batch), 8), dim=-1)


@pytest.mark.parametrize('error', [RuntimeError, OSError])
def test_a_failed_write_warns_and_leaves_no_tmp_file(tmp_path, monkeypatch,
                                                     capsys, error):
    """torch.save raises RuntimeError on a full disk (OSError elsewhere): the
    run goes on without keeping the rows, and no temporary file stays."""
    def failing_save(obj, path):
        with open(path, 'wb') as handle:
            handle.write(b'partial')
        raise error('No space left on device')
    monkeypatch.setattr(text_bank_module.torch, 'save', failing_save)
    bank = TextEmbeddingBank(tmp_path, 'cafe', torch.float32, 'cpu')
    out = encode_with_bank(bank, ['a cat', 'a dog'], _random_rows, 4,
                           torch.device('cpu'))
    assert out.shape == (2, 8)
    assert 'cannot write' in capsys.readouterr().err
    assert not list(tmp_path.glob('*.tmp'))
    assert not list(tmp_path.glob('*.pt'))


def test_writers_keep_each_others_rows(tmp_path):
    """Two processes open the bank of one tower, then both write: the file
    holds both rows, and each bank reads the other's."""
    a = TextEmbeddingBank(tmp_path, 'deadbeef', torch.float32, 'cpu')
    b = TextEmbeddingBank(tmp_path, 'deadbeef', torch.float32, 'cpu')
    a.add(['a cat'], torch.full((1, 4), 1.))
    b.add(['a dog', 'a cat'], torch.full((2, 4), 2.))
    on_disk = TextEmbeddingBank(tmp_path, 'deadbeef', torch.float32, 'cpu')
    assert sorted(on_disk._sentences) == ['a cat', 'a dog']
    assert on_disk.lookup(['a cat', 'a dog'])[:, 0].tolist() == [1., 2.]
    assert b.missing(['a cat', 'a dog']) == []
    assert b.lookup(['a cat', 'a dog'])[:, 0].tolist() == [1., 2.]


def test_a_writer_holds_the_lock_while_it_writes(tmp_path, monkeypatch):
    """The read-merge-replace runs under an exclusive lock on the sidecar
    lock file, so a second writer waits instead of overwriting."""
    bank = TextEmbeddingBank(tmp_path, 'deadbeef', torch.float32, 'cpu')
    held = []
    original = text_bank_module.torch.save

    def probing_save(obj, path):
        with open(bank.lock_path, 'a') as other:  # another open file
            try:
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(True)
            else:
                held.append(False)
                fcntl.flock(other.fileno(), fcntl.LOCK_UN)
        original(obj, path)
    monkeypatch.setattr(text_bank_module.torch, 'save', probing_save)
    bank.add(['a cat'], torch.ones(1, 4))
    assert held == [True]
    assert os.path.isfile(bank.path)
