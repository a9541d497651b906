"""tools/test.py, tools/train.py and the dist scripts, end to end on tiny data.

The evaluation runs check values. Their datasets are planted
(``mmseg_ovss.testing.planted``): in each benchmark's real layout, the
ground truth is the tiny SegFormer's own prediction reached by a direct
route (image decoded, resized and normalised by hand), with a known block
of wrong labels and a block of ignored pixels in the images after the
first, so the tools must report the metrics counted by hand; a two-process
gloo run must report exactly what the one-process run reports.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner.checkpoint import CheckpointLoader
from mmseg.registry import MODELS
from PIL import Image

import mmseg_ovss.testing.hooks  # noqa: F401  (CrashAfterIterHook)
from mmseg_ovss.testing.labels import (assert_equal_where_decided,
                                       decided_pixels)
from mmseg_ovss.testing.planted import (IMAGE_SIZE, LABEL_ENCODING,
                                        load_model, plant_ground_truth,
                                        planted_data_root, reported_tolerance,
                                        runner_model)
from mmseg_ovss.testing.tiny_configs import tiny_segformer_config
from mmseg_ovss.testing.tiny_datasets import make_tiny_dataset
from mmseg_ovss.testing.tools import load_tool, run_tool
from mmseg_ovss.utils.errors import (OVSSConfigError, OVSSDataError,
                                     OVSSWeightsError)
from mmseg_ovss.utils.paths import find_resource

BENCHMARKS = ('voc21', 'voc20', 'pc60', 'pc59', 'pc459', 'coco_object',
              'coco_stuff171', 'ade150', 'ade847', 'cityscapes')
METRICS = ('aAcc', 'mIoU', 'mAcc')
# Pixels whose two best logits are closer than TIE_RTOL times the image's
# largest |logit| are ignored in the planted ground truth. Along its
# longest path the tiny SegFormer's fp32 forward pass sums of order 1100
# terms (the 8x8x8 spatial-reduction conv: 512, the 7x7x3 patch embedding:
# 147, three 3x3x8 patch embeddings: 216, the MLPs, attention and the
# 32-channel fuse), so another summation order (CPU, thread count, batch
# size) moves a logit by of order 1100 eps of the magnitude, the gap of two
# logits by twice that. (Measured: at most 8 eps between 1 and 2 threads
# and batch sizes 1 and 2.)
TIE_RTOL = 2 * 1100 * float(torch.finfo(torch.float32).eps)
# the check must cover nearly every pixel: at most this share are ties
MAX_TIE_SHARE = 0.05


def _dataset_facts(name):
    """Class count, ignore index and annotation loader of a dataset base."""
    from mmseg.registry import DATASETS
    import mmseg_ovss  # noqa: F401  (registers the datasets)
    base = Config.fromfile(
        find_resource('configs') / f'_base_/datasets/{name}.py')
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


def _plant(tmp_path, config, name, options=(), model=None, num_images=2):
    """Plant ``name``'s tiny dataset below ``tmp_path/data`` for the test
    run of ``config`` (``--cfg-options`` ``options``); returns the
    ``--cfg-options`` arguments that point the run at it and the planted
    data. ``model(run_cfg)`` gives the model to plant from (default: a
    seeded one, saved as ``planted.checkpoint``)."""
    data_root = planted_data_root(name, tmp_path / 'data')
    argv = ['--cfg-options', *options,
            f'test_dataloader.dataset.data_root={data_root}']
    tool = load_tool('test')
    run_cfg = tool.build_cfg(tool.parse_args(
        [str(config), '--work-dir', str(tmp_path / 'plant'), *argv]))
    planted = plant_ground_truth(
        run_cfg, tmp_path / 'data',
        tmp_path / 'planted.pth' if model is None else None,
        num_images=num_images, model=None if model is None else
        model(run_cfg), tie_rtol=TIE_RTOL)
    ties = sum(int(t.sum()) for t in planted.ties)
    assert ties <= MAX_TIE_SHARE * num_images * np.prod(IMAGE_SIZE), ties
    return argv, planted


def _assert_hand_count(metrics, planted):
    """The reported metrics are the ones counted pixel by pixel."""
    expected = planted.expected_metrics()
    tolerance = reported_tolerance(planted.num_classes)
    for key in METRICS:
        assert abs(float(metrics[key]) - expected[key]) <= tolerance, (
            key, metrics, expected)


def _reported_in_log(log):
    """aAcc/mIoU/mAcc of the (rank 0) line ``Iter(test) [n/n] aAcc: ...``."""
    (line, ) = [ln for ln in log.splitlines()
                if re.search(r'Iter\(test\) \[(\d+)/\1\]\s+aAcc', ln)]
    return {key: float(re.search(rf'\b{key}: ([0-9.]+)', line).group(1))
            for key in METRICS}


def _as_logged(metrics):
    """Metrics as the logger prints them (4 decimals; mmseg rounds to 2)."""
    return {key: round(float(metrics[key]), 4) for key in METRICS}


@pytest.mark.parametrize('name', BENCHMARKS)
def test_test_tool_runs_every_benchmark(name, tmp_path):
    """tools/test.py reports the hand-counted metrics on every benchmark's
    planted labels (label encoding, ignore value, reduce_zero_label, uint16
    TIFFs, the resize back to the original size)."""
    cfg = _write_tiny_config(tmp_path, name)
    options, planted = _plant(tmp_path, cfg, name)
    metrics = run_tool('test', [cfg, planted.checkpoint, '--work-dir',
                                tmp_path / 'work', *options])
    expected = planted.expected_metrics()
    # a non-trivial check: several classes, and the corruption is visible
    assert len(np.unique(planted.predictions[0])) >= 2
    assert expected['aAcc'] < 99
    _assert_hand_count(metrics, planted)


@pytest.mark.parametrize('name', ('voc21', 'ade150', 'pc459'))
def test_test_tool_show_dir_and_out(name, tmp_path):
    """--out writes each image's prediction in the dataset's own id
    convention (+1 for reduce_zero_label, 16-bit beyond 255 ids): the
    planted prediction, away from near ties."""
    cfg = _write_tiny_config(tmp_path, name)
    options, planted = _plant(tmp_path, cfg, name)
    out_dir = tmp_path / 'pred'
    metrics = run_tool('test', [cfg, planted.checkpoint, '--work-dir',
                                tmp_path / 'work', '--show-dir', 'vis',
                                '--out', out_dir, *options])
    _assert_hand_count(metrics, planted)
    painted = list((tmp_path / 'work').rglob('vis/**/*.png'))
    assert len(painted) == len(planted.image_paths)
    offset = LABEL_ENCODING[name][0]
    assert len(list(out_dir.glob('*.png'))) == len(planted.image_paths)
    for image, prediction, ties in zip(planted.image_paths,
                                       planted.predictions, planted.ties):
        written = np.array(Image.open(out_dir / f'{Path(image).stem}.png'))
        assert written.dtype == (np.uint16 if name == 'pc459' else np.uint8)
        np.testing.assert_array_equal(
            (written.astype(np.int64) - offset)[~ties], prediction[~ties])


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
        ['bash', str(find_resource('tools') / script)] +
        [str(a) for a in args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def test_dist_train_then_dist_test_on_two_cpu_processes(tiny_data_root,
                                                        tmp_path):
    """Two processes train; the trained checkpoint, evaluated by two
    processes on labels planted from it (3 images: the sampler pads one
    rank), reports the one-process run's metrics, the hand count."""
    cfg = _write_tiny_config(tmp_path, 'voc21', train_iters=2,
                             checkpoint_interval=2)
    work = tmp_path / 'work'
    log = _run_script('dist_train.sh', [cfg, 2, '--work-dir', work],
                      tmp_path, 29611)
    assert 'Iter(train) [2/2]' in log
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    ckpt = work / 'iter_2.pth'
    assert ckpt.is_file()
    options, planted = _plant(tmp_path, cfg, 'voc21', num_images=3,
                              model=lambda run_cfg: load_model(run_cfg, ckpt))
    single = run_tool('test', [cfg, ckpt, '--work-dir', tmp_path / 'single',
                               *options])
    _assert_hand_count(single, planted)
    log = _run_script('dist_test.sh', [cfg, ckpt, 2, '--work-dir',
                                       tmp_path / 'dist', *options],
                      tmp_path, 29612)
    assert _reported_in_log(log) == _as_logged(single)


def test_dist_test_without_checkpoint(tmp_path):
    """``dist_test.sh CONFIG 2`` (no checkpoint): the seeded model the
    Runner builds, on labels planted from it (3 images), reports the
    one-process run's metrics, the hand count."""
    cfg = _write_tiny_config(tmp_path, 'voc20')
    options, planted = _plant(tmp_path, cfg, 'voc20', ['+randomness.seed=0'],
                              model=runner_model, num_images=3)
    single = run_tool('test', [cfg, '--work-dir', tmp_path / 'single',
                               *options])
    _assert_hand_count(single, planted)
    log = _run_script('dist_test.sh', [cfg, 2, '--work-dir', tmp_path / 'w',
                                       *options], tmp_path, 29613)
    assert _reported_in_log(log) == _as_logged(single)


def _train_weights(cfg, work, extra=()):
    runner = run_tool('train', [cfg, '--work-dir', work, *extra])
    return {k: v.detach().clone()
            for k, v in runner.model.state_dict().items()}


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


def test_testing_helpers_use_the_shipped_configs_and_tools(tmp_path,
                                                           monkeypatch):
    """Without a checkout (an installed wheel) the tiny configs and
    ``run_tool`` use the copies under ``mmseg_ovss/.mim/``."""
    from mmseg_ovss.testing import tools as tools_module
    from mmseg_ovss.utils import paths
    mim = tmp_path / '.mim'
    for item in ('configs', 'tools'):
        shutil.copytree(find_resource(item), mim / item)
    monkeypatch.setattr(paths, 'REPO_ROOT', None)
    monkeypatch.setattr(paths, 'MIM_DIR', mim)
    monkeypatch.setattr(tools_module, '_loaded', {})
    config = _write_tiny_config(tmp_path, 'voc21')
    assert Config.fromfile(str(config)).test_dataloader.dataset.type == \
        'PascalVOC21Dataset'
    assert f"'{mim.as_posix()}/configs/_base_/datasets/voc21.py'" in \
        config.read_text()
    assert Path(load_tool('test').__file__) == mim / 'tools' / 'test.py'
    with pytest.raises(OVSSDataError, match=r"no tool .*tset\.py; the tools "
                       r"in .* are \[.*'test'"):
        load_tool('tset')


# ----------------------------------------------------- --tta, CLIP segmentor
#: a baseline config made tiny on the command line (tiny random CLIP, one
#: template, 32/16 windows, a 32-pixel short side), with a probability
#: threshold that sends part of each image to the background
CLIP_TTA_CONFIG = 'configs/baselines/sclip_voc21.py'
CLIP_TTA_OPTIONS = (
    'model.clip.model_name=ovss-tiny-ViT-16', 'model.clip.random_init=True',
    'model.text_encoder.templates=single',
    'model.test_cfg.crop_size=(32,32)',
    'model.test_cfg.stride=(16,16)', 'model.prob_thd=0.3',
    'test_dataloader.num_workers=0',
    'test_dataloader.persistent_workers=False',
    'test_dataloader.dataset.pipeline.1.scale=(2048,32)')


def _clip_tta_argv(tmp_path, *options):
    data_root = make_tiny_dataset('voc21', tmp_path / 'data',
                                  image_size=(48, 64))
    return [find_resource('configs').parent / CLIP_TTA_CONFIG, '--work-dir',
            tmp_path / 'work', '--cfg-options', *CLIP_TTA_OPTIONS, *options,
            f'test_dataloader.dataset.data_root={data_root}'], data_root


def _view_scores(model, path, mirrored):
    """Class scores (K, H, W) at the original size of one image file, or
    of its left-right mirror, mirrored back; by hand: decoded (BGR),
    rescaled as Resize(keep_ratio=True), mirrored, turned RGB, normalised,
    predicted as an unflipped image."""
    import mmcv
    from mmseg.structures import SegDataSample
    image = mmcv.imread(str(path))
    ori_shape = image.shape[:2]
    image = mmcv.imrescale(image, (2048, 32), interpolation='bilinear',
                           backend='cv2')
    if mirrored:
        image = image[:, ::-1]
    pixels = torch.from_numpy(np.ascontiguousarray(
        image[..., ::-1].transpose(2, 0, 1))).float()
    cfg = model.data_preprocessor
    inputs = ((pixels - cfg.mean) / cfg.std)[None]
    sample = SegDataSample(metainfo=dict(
        ori_shape=ori_shape, img_shape=image.shape[:2],
        pad_shape=image.shape[:2], padding_size=[0, 0, 0, 0]))
    with torch.no_grad():
        scores = model.predict(inputs, [sample])[0].seg_logits.data
    return scores.flip(-1) if mirrored else scores


def test_flip_tta_of_a_clip_segmentor(tmp_path):
    """tools/test.py --tta on a CLIP config writes, per image, the labels of
    the mean of the image's and its mirror's class scores (the mirror's
    mirrored back), with prob_thd -> background on the mean."""
    from mmseg.registry import DATASETS
    argv, data_root = _clip_tta_argv(tmp_path)
    out = tmp_path / 'pred'
    metrics = run_tool('test', [*argv[:1], '--tta', '--out', out, *argv[1:]])
    assert 'mIoU' in metrics
    tool = load_tool('test')
    cfg = tool.build_cfg(tool.parse_args([str(a) for a in argv]))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    model.set_dataset_classes(
        DATASETS.get(cfg.test_dataloader.dataset.type).METAINFO['classes'])
    images = sorted(Path(data_root, 'JPEGImages').glob('*.jpg'))
    assert len(images) == 2
    # the two routes run the same operations on the same pixels; the mean
    # of two scores <= 1 adds a rounding or two
    tol = 16 * float(torch.finfo(torch.float32).eps)
    for path in images:
        plain = _view_scores(model, path, mirrored=False)
        mean = (plain + _view_scores(model, path, mirrored=True)) / 2
        best, expected = mean.max(0)
        background = best < 0.3
        expected[background] = 0
        clear = decided_pixels(mean, tol) & ((best - 0.3).abs() > tol)
        written = cv2.imread(str(out / f'{path.stem}.png'),
                             cv2.IMREAD_UNCHANGED)
        assert written.shape == (48, 64)
        assert_equal_where_decided(written, expected, clear,
                                   min_fraction=0.9)
        # the threshold and the mirrored view both matter here
        assert background.any() and (~background).any()
        assert (plain.argmax(0).numpy() != expected.numpy()).any()


@pytest.mark.parametrize('max_mb', ['0.0001', '0'])
def test_flip_tta_needs_full_size_seg_logits(tmp_path, max_mb):
    """Subsampled (or no) stored scores cannot be averaged: the error names
    the option to raise."""
    argv, _ = _clip_tta_argv(tmp_path, f'+model.seg_logits.max_mb={max_mb}')
    with pytest.raises(OVSSConfigError, match=r'model\.seg_logits\.max_mb='
                       r'.*Raise model\.seg_logits\.max_mb \(None'):
        run_tool('test', [*argv[:1], '--tta', *argv[1:]])
