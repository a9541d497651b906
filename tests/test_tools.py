"""tools/test.py, tools/train.py and the dist scripts, end to end on tiny data."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.runner.checkpoint import CheckpointLoader

import mmseg_ovss.testing.hooks  # noqa: F401  (CrashAfterIterHook)
from mmseg_ovss.testing.tiny_configs import tiny_segformer_config
from mmseg_ovss.testing.tools import run_tool
from mmseg_ovss.utils.errors import (OVSSConfigError, OVSSDataError,
                                     OVSSWeightsError)

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ('voc21', 'voc20', 'pc60', 'pc59', 'pc459', 'coco_object',
              'coco_stuff171', 'ade150', 'ade847', 'cityscapes')


def _dataset_facts(name):
    """Class count, ignore index and annotation loader of a dataset base."""
    from mmseg.registry import DATASETS
    import mmseg_ovss  # noqa: F401  (registers the datasets)
    base = Config.fromfile(REPO_ROOT / f'configs/_base_/datasets/{name}.py')
    dataset_cfg = base.test_dataloader.dataset
    dataset_cls = DATASETS.get(dataset_cfg.type)
    num_classes = len(dataset_cls.METAINFO['classes'])
    ignore_index = dataset_cfg.get('ignore_index', 255)
    loader = [t for t in base.test_pipeline if 'Annotation' in t['type']]
    assert len(loader) == 1, f'{name}: expected one annotation loader'
    load_annotations = 'dict(' + ', '.join(
        f'{k}={v!r}' for k, v in loader[0].items()) + ')'
    return num_classes, ignore_index, load_annotations


def _write_tiny_config(tmp_path, name, **kwargs):
    num_classes, ignore_index, load_annotations = _dataset_facts(name)
    path = tmp_path / f'tiny_{name}.py'
    path.write_text(tiny_segformer_config(
        name, num_classes, load_annotations, ignore_index=ignore_index,
        **kwargs))
    return path


@pytest.mark.parametrize('name', BENCHMARKS)
def test_test_tool_runs_every_benchmark(name, tiny_data_root, tmp_path):
    cfg = _write_tiny_config(tmp_path, name)
    metrics = run_tool('test', [cfg, '--work-dir', tmp_path / 'work'])
    assert set(metrics) >= {'aAcc', 'mIoU', 'mAcc'}
    assert 0.0 <= metrics['aAcc'] <= 100.0


def test_test_tool_show_dir_and_out(tiny_data_root, tmp_path):
    cfg = _write_tiny_config(tmp_path, 'voc21')
    out_dir = tmp_path / 'pred'
    run_tool('test', [cfg, '--work-dir', tmp_path / 'work', '--show-dir',
                      'vis', '--out', out_dir])
    painted = list((tmp_path / 'work').rglob('vis/**/*.png'))
    assert painted, 'no painted images under the work dir'
    predictions = list(out_dir.glob('*.png'))
    assert len(predictions) == len(list(
        (tiny_data_root / 'VOCdevkit/VOC2012/SegmentationClass').glob('*.png')))


def test_unknown_cfg_option_is_refused(tiny_data_root, tmp_path):
    cfg = _write_tiny_config(tmp_path, 'voc21')
    with pytest.raises(OVSSConfigError, match=r'decode_hed.*does not exist'):
        run_tool('test', [cfg, '--cfg-options', 'model.decode_hed.channels=4'])
    with pytest.raises(OVSSConfigError, match='"prob_thd" does not exist'):
        run_tool('test', [cfg, '--cfg-options',
                          'model.decode_head.prob_thd=0.1'])


def test_plus_prefix_adds_a_new_key(tiny_data_root, tmp_path):
    cfg = _write_tiny_config(tmp_path, 'voc21')
    args = load_test_args([cfg, '--cfg-options', '+my_note=hello'])
    assert args.my_note == 'hello'


def load_test_args(argv):
    from mmseg_ovss.testing.tools import load_tool
    tool = load_tool('test')
    return tool.build_cfg(tool.parse_args([str(a) for a in argv]))


def test_missing_checkpoint_is_a_clear_error(tiny_data_root, tmp_path):
    cfg = _write_tiny_config(tmp_path, 'voc21')
    with pytest.raises(OVSSWeightsError, match='does not exist'):
        run_tool('test', [cfg, tmp_path / 'missing.pth'])


def _run_script(script, args, tmp_path, port):
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(port),
               OMP_NUM_THREADS='1')
    proc = subprocess.run(
        ['bash', str(REPO_ROOT / 'tools' / script)] + [str(a) for a in args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def test_dist_train_then_dist_test_on_two_cpu_processes(tiny_data_root,
                                                        tmp_path):
    cfg = _write_tiny_config(tmp_path, 'voc21', train_iters=2,
                             checkpoint_interval=2)
    work = tmp_path / 'work'
    log = _run_script('dist_train.sh', [cfg, 2, '--work-dir', work],
                      tmp_path, 29611)
    assert 'Iter(train) [2/2]' in log
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    ckpt = work / 'iter_2.pth'
    assert ckpt.is_file()
    log = _run_script('dist_test.sh', [cfg, ckpt, 2, '--work-dir', work],
                      tmp_path, 29612)
    assert 'mIoU' in log


def test_dist_test_without_checkpoint(tiny_data_root, tmp_path):
    cfg = _write_tiny_config(tmp_path, 'voc20')
    log = _run_script('dist_test.sh', [cfg, 2, '--work-dir', tmp_path / 'w'],
                      tmp_path, 29613)
    assert 'mIoU' in log


def _train_weights(cfg, work, extra=()):
    runner = run_tool('train', [cfg, '--work-dir', work, *extra])
    return {k: v.detach().clone() for k, v in runner.model.state_dict().items()}


def test_resume_after_crash_matches_uninterrupted_run(tiny_data_root,
                                                      tmp_path):
    cfg = _write_tiny_config(tmp_path, 'voc21', train_iters=4,
                             checkpoint_interval=2)
    reference = _train_weights(cfg, tmp_path / 'uninterrupted')

    crashing_cfg = tmp_path / 'tiny_voc21_crashing.py'
    crashing_cfg.write_text(
        f"_base_ = ['{cfg.name}']\n"
        "custom_hooks = [dict(type='CrashAfterIterHook', after_iter=3)]\n")
    crashed = tmp_path / 'crashed'
    with pytest.raises(RuntimeError, match='simulated crash'):
        run_tool('train', [crashing_cfg, '--work-dir', crashed])
    assert (crashed / 'iter_2.pth').is_file()
    assert not (crashed / 'iter_4.pth').exists()
    before = set(crashed.glob('*/*.log'))
    resumed = _train_weights(cfg, crashed, ['--resume'])
    assert (crashed / 'iter_4.pth').is_file()
    (resume_log,) = set(crashed.glob('*/*.log')) - before
    log = resume_log.read_text()
    assert 'resumed epoch: 0, iter: 2' in log, 'did not resume from iter_2'
    assert 'Iter(train) [3/4]' in log and 'Iter(train) [1/4]' not in log
    assert resumed.keys() == reference.keys()
    # the same fp32 operations on the same batches in the same process:
    # torch's fp32 defaults (rtol 1.3e-6 = ~11 eps, atol 1e-5) only absorb
    # kernel-order differences, not a wrong resume
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key],
                                   msg=f'{key} differs after resume')


def test_mmengine_checkpoint_loads_with_weights_only(tiny_data_root,
                                                     tmp_path):
    cfg = _write_tiny_config(tmp_path, 'voc21', train_iters=1,
                             checkpoint_interval=1)
    run_tool('train', [cfg, '--work-dir', tmp_path / 'w'])
    path = str(tmp_path / 'w' / 'iter_1.pth')
    # Plain weights-only loading refuses mmengine's message hub ...
    with pytest.raises(Exception, match='Weights only load failed'):
        torch.load(path, weights_only=True)
    # ... mmengine's loader (as patched by mmseg_ovss) reads it safely.
    ckpt = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    assert 'message_hub' in ckpt and 'optimizer' in ckpt
    assert ckpt['meta']['iter'] == 1


def test_test_tool_arguments_out_of_range(tiny_data_root, tmp_path):
    cfg = _write_tiny_config(tmp_path, 'voc21')
    with pytest.raises(OVSSConfigError, match='--show-interval 0: give a '
                       'positive n'):
        run_tool('test', [cfg, '--show-dir', 'vis', '--show-interval', 0])
    with pytest.raises(OVSSConfigError, match='--wait-time -1.0'):
        run_tool('test', [cfg, '--show', '--wait-time', -1])
    a_file = tmp_path / 'notes.txt'
    a_file.write_text('x')
    with pytest.raises(OVSSDataError, match='--out .*notes.txt is a file'):
        run_tool('test', [cfg, '--out', a_file])
