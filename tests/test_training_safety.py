"""Training stops safely; configs that cannot do what is asked say so.

- a NaN/inf loss (or non-finite weights about to be saved) stops training
  with the iteration, the loss and its value, and the last good checkpoint
  survives ``max_keep_ckpts`` and stays the one ``--resume`` continues from;
- ``tools/train.py`` on a training-free config points at ``tools/test.py``;
- misspelled keys in a config file are refused with the closest valid key;
- ``tools/test.py --tta`` flips for mmseg ``EncoderDecoder`` models and is
  refused for the training-free segmentors.
"""
import glob
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import CheckpointLoader

import mmseg_ovss.testing.hooks  # noqa: F401  (fault-injection hooks)
from mmseg.registry import MODELS
from mmseg_ovss.engine.hooks import NonFiniteLossError
from mmseg_ovss.engine.launch import check_config_keys
from mmseg_ovss.testing.labels import (assert_equal_where_decided,
                                       decided_pixels)
from mmseg_ovss.testing.planted import predict_bgr
from mmseg_ovss.testing.tiny_configs import tiny_segformer_config
from mmseg_ovss.testing.tiny_datasets import make_tiny_dataset
from mmseg_ovss.testing.tools import run_tool
from mmseg_ovss.utils.errors import OVSSConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
VOC_LOADER = "dict(type='LoadCheckedAnnotations')"


def _tiny_voc(tmp_path, **kwargs) -> Path:
    path = tmp_path / f'tiny_voc21_{len(list(tmp_path.glob("*.py")))}.py'
    path.write_text(tiny_segformer_config('voc21', 21, VOC_LOADER, **kwargs))
    return path


def _derived(tmp_path, base: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(f"_base_ = ['{base.as_posix()}']\n{text}")
    return path


def _all_finite(checkpoint: Path) -> bool:
    state = CheckpointLoader.load_checkpoint(str(checkpoint), 'cpu')
    return all(torch.isfinite(t).all() for t in state['state_dict'].values()
               if t.is_floating_point())


# ------------------------------------------------------------ NaN / inf
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_data_root,
                                                       tmp_path):
    cfg = _tiny_voc(tmp_path, train_iters=4, checkpoint_interval=1,
                    max_keep_ckpts=1, nan_loss_at_iter=3)
    work = tmp_path / 'work'
    with pytest.raises(NonFiniteLossError) as info:
        run_tool('train', [cfg, '--work-dir', work])
    message = str(info.value)
    assert 'iteration 3' in message
    assert 'decode.loss_ce=nan' in message and 'loss=nan' in message
    assert 'iter_2.pth is kept' in message and '--resume' in message
    # max_keep_ckpts=1 did not delete the last good checkpoint for a NaN one
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_2.pth']
    assert _all_finite(work / 'iter_2.pth')
    assert (work / 'last_checkpoint').read_text().endswith('iter_2.pth')

    # --resume (without the fault) continues from the good checkpoint
    clean = _tiny_voc(tmp_path, train_iters=4, checkpoint_interval=1,
                      max_keep_ckpts=1)
    before = set(work.glob('*/*.log'))
    run_tool('train', [clean, '--work-dir', work, '--resume'])
    (log,) = set(work.glob('*/*.log')) - before
    text = log.read_text()
    assert 'resumed epoch: 0, iter: 2' in text
    assert 'Iter(train) [3/4]' in text and 'Iter(train) [1/4]' not in text
    assert _all_finite(work / 'iter_4.pth')


def test_non_finite_weights_behind_a_finite_loss_are_not_saved(
        tiny_data_root, tmp_path):
    base = _tiny_voc(tmp_path, train_iters=3, checkpoint_interval=1,
                     max_keep_ckpts=1)
    cfg = _derived(tmp_path, base, 'inf_update.py', (
        "custom_hooks = [dict(type='NaNWeightsAfterIterHook', at_iter=2)]\n"))
    work = tmp_path / 'work'
    with pytest.raises(NonFiniteLossError,
                       match=r'iteration 2: the weights about to be saved'):
        run_tool('train', [cfg, '--work-dir', work])
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_1.pth']
    assert (work / 'last_checkpoint').read_text().endswith('iter_1.pth')


def test_inf_loss_is_named(tiny_data_root, tmp_path):
    base = _tiny_voc(tmp_path, train_iters=2, checkpoint_interval=1)
    cfg = _derived(tmp_path, base, 'inf_loss.py', (
        "custom_hooks = [dict(type='NaNWeightsBeforeIterHook', at_iter=1,\n"
        "                     value=float('inf'))]\n"))
    with pytest.raises(NonFiniteLossError,
                       match=r'iteration 1: non-finite loss .*=(nan|inf)'
                       r'.*No checkpoint was saved'):
        run_tool('train', [cfg, '--work-dir', tmp_path / 'work'])
    assert not list((tmp_path / 'work').glob('*.pth'))


# --------------------------------------------------- training-free configs
@pytest.mark.parametrize('config', ['configs/freecp/sclip_ade.py',
                                    'configs/baselines/sclip_voc21.py',
                                    'configs/pnp_ovss/blip_voc20.py'])
def test_train_tool_on_a_training_free_config(config, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(OVSSConfigError) as info:
        run_tool('train', [REPO_ROOT / config])
    message = str(info.value)
    assert 'no train_dataloader' in message
    assert f'python tools/test.py {REPO_ROOT / config}' in message


# --------------------------------------------------- misspelled config keys
@pytest.mark.parametrize('text,key,closest', [
    ("test_dataloder = dict(batch_size=1)\n", 'test_dataloder',
     'test_dataloader'),
    ("model = dict(test_cfg=dict(mode='slide', crop_sise=(32, 32),\n"
     "                           stride=(16, 16)))\n",
     'model.test_cfg.crop_sise', 'model.test_cfg.crop_size'),
    ("env_cfg = dict(cudnn_benchmak=True)\n", 'env_cfg.cudnn_benchmak',
     'env_cfg.cudnn_benchmark'),
    ("test_evaluator = dict(ignore_idx=0)\n", 'test_evaluator.ignore_idx',
     'test_evaluator.ignore_index'),
    ("default_hooks = dict(checkpiont=dict(type='CheckpointHook'))\n",
     'default_hooks.checkpiont', 'default_hooks.checkpoint'),
])
def test_misspelled_config_key_is_refused(tiny_data_root, tmp_path, text,
                                          key, closest):
    cfg = _derived(tmp_path, _tiny_voc(tmp_path), 'typo.py', text)
    with pytest.raises(OVSSConfigError) as info:
        run_tool('test', [cfg, '--work-dir', tmp_path / 'work'])
    message = str(info.value)
    assert f'config {cfg}' in message
    assert f'"{key}"' in message and f'did you mean "{closest}"' in message


def test_misspelled_test_cfg_of_a_clip_config(tmp_path):
    """The example of the issue, on a real training-free config: refused
    before the CLIP model is built (no weights needed)."""
    cfg = _derived(tmp_path, REPO_ROOT / 'configs/baselines/sclip_voc21.py',
                   'sclip_typo.py',
                   "model = dict(test_cfg=dict(crop_sise=(224, 224)))\n")
    with pytest.raises(OVSSConfigError,
                       match=r'"model.test_cfg.crop_sise".*did you mean '
                       r'"model.test_cfg.crop_size"'):
        run_tool('test', [cfg])


def test_no_config_of_the_repository_is_flagged():
    """Helper variables (crop_size, test_pipeline, ...) are not typos."""
    paths = sorted(glob.glob(str(REPO_ROOT / 'configs/**/*.py'),
                             recursive=True))
    assert len(paths) > 100
    for path in paths:
        check_config_keys(Config.fromfile(path), path)


# ------------------------------------------------------------------- TTA
def test_tta_is_refused_for_training_free_segmentors():
    """PnP-OVSS has no test-time augmentation (CLIP segmentors do: see
    tests/test_tools.py, CLIPSegTTAModel)."""
    with pytest.raises(OVSSConfigError,
                       match=r'--tta: PnPOVSS .*'
                       'does not support test-time augmentation'):
        run_tool('test', [REPO_ROOT / 'configs/pnp_ovss/blip_voc20.py',
                          '--tta'])


def _predict(model, image: np.ndarray) -> torch.Tensor:
    """Class scores (C, H, W) of the model on one BGR image, unflipped."""
    return predict_bgr(model, image).seg_logits.data


def test_flip_tta_averages_the_image_and_its_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv('OVSS_DATA_ROOT', str(tmp_path / 'data'))
    # 48x96 images: the tiny test pipeline's Resize(96, 48) keeps them
    data_root = Path(make_tiny_dataset('voc21', tmp_path / 'data',
                                       image_size=(48, 96)))
    config = _tiny_voc(tmp_path)
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(config).model)
    model.init_weights()
    model.eval()
    checkpoint = tmp_path / 'tiny.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)

    out = tmp_path / 'pred'
    metrics = run_tool('test', [config, checkpoint, '--tta', '--out', out,
                                '--work-dir', tmp_path / 'work'])
    assert 'mIoU' in metrics
    images = sorted((data_root / 'JPEGImages').glob('*.jpg'))
    assert len(images) == 2
    for image_path in images:
        image = cv2.imread(str(image_path))
        plain = _predict(model, image).softmax(0)
        mirrored = _predict(model, image[:, ::-1]).flip(-1).softmax(0)
        expected = (plain + mirrored) / 2
        written = cv2.imread(str(out / f'{image_path.stem}.png'),
                             cv2.IMREAD_UNCHANGED)
        # pixels whose two best averaged probabilities are closer than the
        # fp32 rounding of a 21-way softmax sum may flip between two runs
        tol = 64 * torch.finfo(torch.float32).eps
        assert_equal_where_decided(written, expected.argmax(0),
                                   decided_pixels(expected, tol),
                                   min_fraction=0.9)
        # the mirrored view changed the prediction (this model, seed 0)
        assert (plain.argmax(0).numpy() != written).any()
