"""Checkpoints given to tools/test.py and tools/train.py --resume.

A checkpoint whose keys do not fit the model, a file that is empty, cut
short or of another kind, and a ``--resume`` with nothing (or a cut file)
to resume from each stop with a message that names the file and the fix.
"""
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import CheckpointLoader
from torch import nn

import mmseg_ovss  # noqa: F401  (registers the hook and the datasets)
from mmseg_ovss.testing.tiny_configs import tiny_segformer_config
from mmseg_ovss.testing.tools import run_tool
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSWeightsError

REPO_ROOT = Path(__file__).resolve().parents[1]
JPEG = REPO_ROOT / 'data' / 'samples' / 'cat.jpg'


@pytest.fixture(scope='module')
def voc21_root(tmp_path_factory):
    from mmseg_ovss.testing.tiny_datasets import (exported_data_root,
                                                  make_tiny_dataset)
    root = tmp_path_factory.mktemp('ckpt_data')
    make_tiny_dataset('voc21', root)
    with exported_data_root(root):
        yield root


def _config(tmp_path, name='tiny.py', width=8, **kwargs):
    base = Config.fromfile(REPO_ROOT / 'configs/_base_/datasets/voc21.py')
    (loader,) = [t for t in base.test_pipeline if 'Annotation' in t['type']]
    load = 'dict(' + ', '.join(f'{k}={v!r}' for k, v in loader.items()) + ')'
    text = tiny_segformer_config('voc21', 21, load, **kwargs)
    if width != 8:
        for old, new in (('embed_dims=8', f'embed_dims={width}'),
                         ('in_channels=[8, 8, 8, 8]',
                          f'in_channels=[{width}] * 4'),
                         ('channels=8,', f'channels={width},')):
            assert old in text
            text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def _state_dict(cfg_path):
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    model = MODELS.build(Config.fromfile(cfg_path).model)
    return model.state_dict()


def _save(path, state):
    torch.save({'state_dict': state, 'meta': {}}, path)
    return path


def test_checkpoint_that_fits_loads(voc21_root, tmp_path):
    cfg = _config(tmp_path)
    ckpt = _save(tmp_path / 'good.pth', _state_dict(cfg))
    metrics = run_tool('test', [cfg, ckpt, '--work-dir', tmp_path / 'w'])
    assert 0 <= metrics['mIoU'] <= 100


def test_checkpoint_with_a_key_prefix_is_refused(voc21_root, tmp_path):
    """mmengine only warned and evaluated a randomly initialised model."""
    cfg = _config(tmp_path)
    state = _state_dict(cfg)
    ckpt = _save(tmp_path / 'prefixed.pth',
                 {'model.' + k: v for k, v in state.items()})
    with pytest.raises(OVSSWeightsError) as info:
        run_tool('test', [cfg, ckpt, '--work-dir', tmp_path / 'w'])
    message = str(info.value)
    expected = len([k for k in state if 'num_batches_tracked' not in k])
    assert 'prefixed.pth' in message
    assert f'0 of its {expected} expected keys match' in message
    assert f'missing from the checkpoint: {expected}' in message
    assert "prefix 'model.' is removed" in message
    assert 'checkpoint_min_match' in message


def test_checkpoint_of_another_width_is_refused(voc21_root, tmp_path):
    """Same key names, other shapes (a ViT-L checkpoint in a ViT-B config)."""
    cfg = _config(tmp_path)
    wide = _state_dict(_config(tmp_path, 'wide.py', width=16))
    ckpt = _save(tmp_path / 'wide.pth', wide)
    with pytest.raises(OVSSWeightsError, match='another architecture') as info:
        run_tool('test', [cfg, ckpt, '--work-dir', tmp_path / 'w'])
    assert 'different shape:' in str(info.value)
    assert 'checkpoint (16,' in str(info.value)


def test_weights_under_another_key_are_refused(voc21_root, tmp_path):
    cfg = _config(tmp_path)
    ckpt = tmp_path / 'nested.pth'
    torch.save({'model': _state_dict(cfg), 'epoch': 3}, ckpt)
    with pytest.raises(OVSSWeightsError, match="under 'model'"):
        run_tool('test', [cfg, ckpt, '--work-dir', tmp_path / 'w'])


def test_partial_checkpoint_is_accepted_above_the_minimum(voc21_root,
                                                          tmp_path):
    cfg = _config(tmp_path)
    state = _state_dict(cfg)
    keys = [k for k in state if 'num_batches_tracked' not in k]
    # the decode head only: a minority of the keys
    head = {k: v for k, v in state.items() if k.startswith('decode_head.')}
    fraction = len([k for k in head if k in keys]) / len(keys)
    assert 0 < fraction < 0.5
    ckpt = _save(tmp_path / 'head.pth', head)
    with pytest.raises(OVSSWeightsError, match='expected keys match'):
        run_tool('test', [cfg, ckpt, '--work-dir', tmp_path / 'w'])
    metrics = run_tool('test', [cfg, ckpt, '--work-dir', tmp_path / 'w',
                                '--cfg-options',
                                f'+checkpoint_min_match={fraction / 2:.3f}'])
    assert 'mIoU' in metrics


def test_expected_keys_skip_frozen_parts():
    """A frozen tower (weights from open_clip) may be absent on purpose;
    trainable parameters and trained BatchNorm statistics may not."""
    from mmseg_ovss.engine.checkpoint import KeyMatch, expected_keys
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4),
                          nn.Linear(4, 2))
    model[0].requires_grad_(False)
    assert expected_keys(model) == [
        '1.weight', '1.bias', '1.running_mean', '1.running_var',
        '2.weight', '2.bias']
    trained = {k: v for k, v in model.state_dict().items()
               if not k.startswith('0.')}
    match = KeyMatch(model, {'state_dict': trained})
    assert match.fraction == 1 and match.missing == ['0.weight', '0.bias']
    # mmengine strips 'module.' (a DDP checkpoint) before loading
    ddp = KeyMatch(model, {'module.' + k: v for k, v in trained.items()})
    assert ddp.fraction == 1
    # a training-free model (nothing trainable) expects every key
    model.requires_grad_(False)
    assert len(expected_keys(model)) == 8
    assert KeyMatch(model, trained).fraction == 6 / 8


def _bad_file(kind, folder):
    """A file named like a checkpoint that cannot be one."""
    if kind == 'empty':
        path = folder / 'empty.pth'
        path.write_bytes(b'')
    elif kind == 'truncated':  # an interrupted save or copy
        data = _save(folder / 'whole.pth', {'w': torch.arange(4096.)}
                     ).read_bytes()
        path = folder / 'cut.pth'
        path.write_bytes(data[:len(data) // 2])
    elif kind == 'text':  # e.g. a download that saved an error page
        path = folder / 'text.pth'
        path.write_text('404 Not Found\n')
    elif kind == 'zip':
        path = folder / 'notes.pth'
        with zipfile.ZipFile(path, 'w') as archive:
            archive.writestr('notes/readme.txt', 'hello')
    else:
        path = Path(shutil.copy(JPEG, folder / 'photo.pth'))
    return path


BAD_FILES = {'empty': 'is empty', 'truncated': 'is truncated',
             'text': 'is a text file',
             'zip': r'not a PyTorch checkpoint \(no data.pkl',
             'jpeg': 'is a JPEG image'}


@pytest.mark.parametrize('kind', sorted(BAD_FILES))
def test_bad_checkpoint_files_name_the_file(kind, voc21_root, tmp_path):
    phrase = BAD_FILES[kind]
    path = _bad_file(kind, tmp_path)
    cfg = _config(tmp_path)
    with pytest.raises(OVSSWeightsError, match=phrase) as info:
        run_tool('test', [cfg, path, '--work-dir', tmp_path / 'w'])
    assert str(path) in str(info.value)
    # mmengine's own loader (load_from in a config, resume) says the same
    with pytest.raises(OVSSWeightsError, match=phrase):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')


def test_good_files_pass_the_format_check(tmp_path):
    from mmseg_ovss.engine.checkpoint import checkpoint_file_problem
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': torch.ones(2)}, legacy,
               _use_new_zipfile_serialization=False)
    zipped = _save(tmp_path / 'zipped.pth', {'w': torch.ones(2)})
    assert checkpoint_file_problem(str(legacy)) is None
    assert checkpoint_file_problem(str(zipped)) is None
    assert CheckpointLoader.load_checkpoint(
        str(legacy), map_location='cpu')['w'].tolist() == [1., 1.]


def _train(cfg, work, *extra):
    return run_tool('train', [cfg, '--work-dir', work, *extra])


def test_train_load_from_is_checked_like_test(voc21_root, tmp_path):
    """Initial weights for fine-tuning (``load_from`` without --resume):
    a prefixed checkpoint or a JPEG stops the run before it trains."""
    cfg = _config(tmp_path, train_iters=1)
    state = _state_dict(cfg)
    prefixed = _save(tmp_path / 'init.pth',
                     {'model.' + k: v for k, v in state.items()})
    with pytest.raises(OVSSWeightsError, match="prefix 'model.' is removed"):
        _train(cfg, tmp_path / 'w1', '--cfg-options', f'load_from={prefixed}')
    fake = tmp_path / 'photo.pth'
    shutil.copy(JPEG, fake)
    with pytest.raises(OVSSWeightsError, match='JPEG'):
        _train(cfg, tmp_path / 'w2', '--cfg-options', f'load_from={fake}')
    good = _save(tmp_path / 'good.pth', state)
    _train(cfg, tmp_path / 'w3', '--cfg-options', f'load_from={good}')
    assert (tmp_path / 'w3' / 'iter_1.pth').is_file()


def test_resume_with_nothing_to_resume_is_an_error(voc21_root, tmp_path):
    """mmengine logged 'Auto resumed from the latest checkpoint None.' and
    trained from scratch."""
    cfg = _config(tmp_path, train_iters=1)
    with pytest.raises(OVSSConfigError, match='nothing to resume') as info:
        _train(cfg, tmp_path / 'never_trained', '--resume')
    assert 'never_trained' in str(info.value)
    assert 'does not exist' in str(info.value)
    assert 'drop --resume' in str(info.value)
    # a work dir with checkpoints but no last_checkpoint names them
    work = tmp_path / 'copied'
    work.mkdir()
    _save(work / 'iter_7.pth', _state_dict(cfg))
    with pytest.raises(OVSSConfigError, match='iter_7.pth'):
        _train(cfg, work, '--resume')


def test_resume_from_a_truncated_last_checkpoint(voc21_root, tmp_path):
    cfg = _config(tmp_path, train_iters=2, checkpoint_interval=1)
    work = tmp_path / 'run'
    _train(cfg, work)
    last = Path((work / 'last_checkpoint').read_text().strip())
    assert last.name == 'iter_2.pth'
    data = last.read_bytes()
    last.write_bytes(data[:len(data) // 3])  # the save was interrupted
    with pytest.raises(OVSSWeightsError) as info:
        _train(cfg, work, '--resume')
    message = str(info.value)
    assert str(last) in message and 'is truncated' in message
    assert 'last_checkpoint' in message
    previous = str(work / 'iter_1.pth')
    assert f'--resume {previous}' in message
    # the advice works
    runner = _train(cfg, work, '--resume', previous)
    assert runner.iter == 2


def test_resume_from_a_file_that_is_not_a_checkpoint(voc21_root, tmp_path):
    cfg = _config(tmp_path, train_iters=1)
    photo = Path(shutil.copy(JPEG, tmp_path / 'iter_1.pth'))
    with pytest.raises(OVSSWeightsError, match='JPEG') as info:
        _train(cfg, tmp_path / 'w', '--resume', photo)
    assert str(photo) in str(info.value)
    with pytest.raises(OVSSWeightsError, match='does not exist'):
        _train(cfg, tmp_path / 'w', '--resume', tmp_path / 'missing.pth')


# ------------------------------------------------------ trusted checkpoints
_LEGACY_MODULE = '''
class Config:
    """Stands for mmcv 1.x's Config, pickled into mmseg 0.x meta."""

    def __init__(self, text):
        self.text = text
'''


def _third_party_checkpoint(folder, state, kind):
    """A checkpoint like a third party's release, which the safe loader
    refuses: its ``meta`` pickles an object of a module that is not
    installed here (mmcv 1.x's ``Config`` of mmseg 0.x), or a numpy object
    outside the allow-list (a ``RandomState``)."""
    import importlib
    import sys

    import numpy as np
    if kind == 'numpy':
        meta = {'rng': np.random.RandomState(3)}
    else:
        (folder / 'legacy_mmcv_config.py').write_text(_LEGACY_MODULE)
        sys.path.insert(0, str(folder))
        try:
            module = importlib.import_module('legacy_mmcv_config')
            meta = {'config': module.Config('model = dict()')}
            path = _save_with_meta(folder, state, meta)
        finally:
            sys.path.remove(str(folder))
            del sys.modules['legacy_mmcv_config']
        (folder / 'legacy_mmcv_config.py').unlink()  # not importable now
        return path
    return _save_with_meta(folder, state, meta)


def _save_with_meta(folder, state, meta):
    path = folder / 'third_party.pth'
    torch.save({'state_dict': state, 'meta': meta}, path)
    return path


REFUSED_GLOBAL = {'numpy': 'numpy.random._pickle.__randomstate_ctor',
                  'module': 'legacy_mmcv_config.Config'}


@pytest.mark.parametrize('kind', sorted(REFUSED_GLOBAL))
def test_untrusted_pickle_is_refused_naming_the_opt_in(voc21_root, tmp_path,
                                                       kind):
    """tools/test.py refuses it by default; --trust-checkpoint (or the
    config key trust_checkpoint=True) loads it and evaluates its weights."""
    cfg = _config(tmp_path)
    state = _state_dict(cfg)
    ckpt = _third_party_checkpoint(tmp_path, state, kind)
    with pytest.raises(OVSSWeightsError) as info:
        run_tool('test', [cfg, ckpt, '--work-dir', tmp_path / 'w'])
    message = str(info.value)
    assert str(ckpt) in message and REFUSED_GLOBAL[kind] in message
    assert '--trust-checkpoint' in message
    assert 'trust_checkpoint = True' in message
    plain = _save(tmp_path / 'plain.pth', state)
    expected = run_tool('test', [cfg, plain, '--work-dir', tmp_path / 'w'])
    trusted = run_tool('test', [cfg, ckpt, '--work-dir', tmp_path / 'w',
                                '--trust-checkpoint'])
    assert trusted == expected  # the same weights were evaluated
    by_key = run_tool('test', [cfg, ckpt, '--work-dir', tmp_path / 'w',
                               '--cfg-options', '+trust_checkpoint=True'])
    assert by_key == expected
    # the trust ended with the run: the file is refused again
    with pytest.raises(OVSSWeightsError, match='--trust-checkpoint'):
        CheckpointLoader.load_checkpoint(str(ckpt), map_location='cpu')


def test_trusted_checkpoint_keeps_objects_of_missing_modules(tmp_path):
    """A class that cannot be imported here (mmcv 1.x's Config under mmcv
    2) comes back as an UnresolvedObject holding what was pickled."""
    from mmseg_ovss.engine.checkpoint import (UnresolvedObject,
                                              trusted_checkpoint)
    state = {'w': torch.arange(3.)}
    path = _third_party_checkpoint(tmp_path, state, 'module')
    with trusted_checkpoint(path):
        loaded = CheckpointLoader.load_checkpoint(str(path),
                                                  map_location='cpu')
    assert torch.equal(loaded['state_dict']['w'], torch.arange(3.))
    config = loaded['meta']['config']
    assert isinstance(config, UnresolvedObject)
    assert config.pickled_name == 'legacy_mmcv_config.Config'
    assert config.state == {'text': 'model = dict()'}


def test_trust_key_must_be_a_bool(voc21_root, tmp_path):
    cfg = _config(tmp_path)
    ckpt = _save(tmp_path / 'good.pth', _state_dict(cfg))
    with pytest.raises(OVSSConfigError, match="trust_checkpoint='yes'"):
        run_tool('test', [cfg, ckpt, '--work-dir', tmp_path / 'w',
                          '--cfg-options', '+trust_checkpoint=yes'])


def test_train_load_from_a_trusted_checkpoint(voc21_root, tmp_path):
    cfg = _config(tmp_path, train_iters=1)
    ckpt = _third_party_checkpoint(tmp_path, _state_dict(cfg), 'numpy')
    with pytest.raises(OVSSWeightsError, match='--trust-checkpoint'):
        _train(cfg, tmp_path / 'w1', '--cfg-options', f'load_from={ckpt}')
    _train(cfg, tmp_path / 'w2', '--trust-checkpoint', '--cfg-options',
           f'load_from={ckpt}')
    assert (tmp_path / 'w2' / 'iter_1.pth').is_file()


def _old_catseg_layout(state):
    """CAT-Seg's key layout: the window attention's q/k/v/proj directly
    under ``attn.`` (``attn.w_msa.q.weight`` -> ``attn.q.weight``)."""
    old = {}
    for key, value in state.items():
        head, _, tail = key.partition('.w_msa.')
        if tail.split('.')[0] in ('q', 'k', 'v', 'proj'):
            key = f'{head}.{tail}'
        old[key] = value
    return old


def test_key_report_follows_legacy_key_renames():
    """The key report agrees with what loads: old CAT-Seg attention keys,
    which the guided Swin attention renames when it loads, are neither
    missing nor unexpected; a key really absent is still missing."""
    from mmseg_ovss.engine.checkpoint import KeyMatch
    from mmseg_ovss.models.blocks.guided_swin import GuidedSwinBlock
    torch.manual_seed(0)
    model = nn.Sequential(GuidedSwinBlock(8, 4, 2, 16, window_size=2),
                          nn.Linear(8, 2))
    reference = nn.Sequential(GuidedSwinBlock(8, 4, 2, 16, window_size=2),
                              nn.Linear(8, 2))
    old = _old_catseg_layout(reference.state_dict())
    assert '0.attn.q.weight' in old and '0.attn.w_msa.q.weight' not in old
    match = KeyMatch(model, {'state_dict': old})
    assert match.missing == [] and match.unexpected == []
    assert match.shape_mismatch == [] and match.fraction == 1
    result = model.load_state_dict(dict(old), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model[0].attn.w_msa.q.weight,
                       reference[0].attn.w_msa.q.weight)
    # a key neither layout provides is still reported
    partial = {k: v for k, v in old.items() if k != '0.attn.k.bias'}
    match = KeyMatch(model, {'state_dict': partial})
    assert match.missing == ['0.attn.w_msa.k.bias']
    assert match.unexpected == [] and match.fraction < 1
    loaded = model.load_state_dict(dict(partial), strict=False)
    assert loaded.missing_keys == match.missing
