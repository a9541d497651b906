"""Prediction files of ``tools/test.py --out`` keep every class id."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from PIL import Image

import mmseg_ovss  # noqa: F401  (registers the metric)
from mmseg.evaluation import IoUMetric
from mmseg.registry import MODELS
from mmseg_ovss.evaluation.iou_metric import OVSSIoUMetric
from mmseg_ovss.testing.labels import (assert_equal_where_decided,
                                       decided_pixels)
from mmseg_ovss.testing.planted import predict_bgr
from mmseg_ovss.testing.tiny_configs import tiny_segformer_config
from mmseg_ovss.testing.tiny_datasets import make_tiny_dataset
from mmseg_ovss.testing.tools import run_tool
from mmseg_ovss.utils.errors import OVSSDataError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _sample(img_path, pred, gt, reduce_zero_label=False):
    return dict(img_path=str(img_path), reduce_zero_label=reduce_zero_label,
                pred_sem_seg=dict(data=torch.as_tensor(pred)[None]),
                gt_sem_seg=dict(data=torch.as_tensor(gt)[None]))


def _read_both_ways(path):
    """The file through OpenCV and through Pillow (two decoders)."""
    with_cv2 = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    with_pil = np.array(Image.open(path))
    np.testing.assert_array_equal(with_cv2, with_pil)
    return with_cv2


def test_ids_above_255_round_trip(tmp_path):
    pred = np.array([[0, 1, 255, 256], [300, 458, 457, 44]])
    metric = OVSSIoUMetric(ignore_index=65535, output_dir=str(tmp_path))
    metric.dataset_meta = dict(classes=[f'c{i}' for i in range(459)])
    metric.process({}, [_sample('/data/img/2008_000001.jpg', pred,
                                np.full_like(pred, 65535))])
    written = _read_both_ways(tmp_path / '2008_000001.png')
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written, pred)  # 300 stays 300, not 44


@pytest.mark.parametrize('num_classes,ignore_index,reduce', [
    (21, 255, False),   # VOC21
    (150, 255, True),   # ADE150: files hold id + 1, 0 = unlabelled
    (171, 255, False),  # COCO-Stuff
])
def test_8bit_files_equal_mmseg_output(tmp_path, num_classes, ignore_index,
                                       reduce):
    """Where every id fits in 8 bits the files are mmseg's, byte for byte."""
    rng = np.random.default_rng(0)
    pred = rng.integers(0, num_classes, size=(6, 9))
    pred[0, 0] = num_classes - 1
    gt = rng.integers(0, num_classes, size=(6, 9))
    samples = [_sample('/x/a.jpg', pred, gt, reduce)]
    meta = dict(classes=[f'c{i}' for i in range(num_classes)])
    ours = OVSSIoUMetric(ignore_index=ignore_index,
                         output_dir=str(tmp_path / 'ours'))
    theirs = IoUMetric(ignore_index=ignore_index,
                       output_dir=str(tmp_path / 'mmseg'))
    for metric in (ours, theirs):
        metric.dataset_meta = meta
        metric.process({}, samples)
    mine = _read_both_ways(tmp_path / 'ours/a.png')
    assert mine.dtype == np.uint8
    np.testing.assert_array_equal(mine, _read_both_ways(tmp_path /
                                                        'mmseg/a.png'))
    np.testing.assert_array_equal(mine, pred + int(reduce))
    assert ours.results[0][0].tolist() == theirs.results[0][0].tolist()


def test_unwritable_output_and_name_clash_are_errors(tmp_path):
    metric = OVSSIoUMetric(output_dir=str(tmp_path))
    metric.dataset_meta = dict(classes=('a', 'b'))
    pred = np.zeros((2, 2), np.int64)
    (tmp_path / 'blocked.png').mkdir()  # a folder where the file should go
    with pytest.raises(OVSSDataError, match='cannot write .*blocked.png'):
        metric.process({}, [_sample('/x/blocked.jpg', pred, pred)])
    metric.process({}, [_sample('/x/a/cat.jpg', pred, pred)])
    with pytest.raises(OVSSDataError, match=r'a/cat.jpg and .*b/cat.jpg'):
        metric.process({}, [_sample('/x/b/cat.jpg', pred, pred)])


def _tiny_ade847(tmp_path, monkeypatch):
    """A tiny SegFormer on ADE-847 whose images need no resizing, with a
    checkpoint whose head favours ids >= 256."""
    monkeypatch.setenv('OVSS_DATA_ROOT', str(tmp_path / 'data'))
    make_tiny_dataset('ade847', tmp_path / 'data', image_size=(48, 96))
    config = tmp_path / 'tiny_ade847.py'
    config.write_text(tiny_segformer_config(
        'ade847', 847, "dict(type='LoadCheckedAnnotations')",
        ignore_index=65535) + "randomness = dict(seed=0)\n")
    cfg = Config.fromfile(config)
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():
        model.decode_head.conv_seg.bias[:256] -= 100.0
    model.eval()
    checkpoint = tmp_path / 'tiny.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    return config, checkpoint, model


def _predict(model, image_path):
    """The model's labels for one image at its own size (no resize needed:
    the test pipeline's Resize(96, 48) keeps a 48x96 image as it is)."""
    result = predict_bgr(model, cv2.imread(str(image_path)))
    return result.pred_sem_seg.data[0].numpy(), result.seg_logits.data


def test_test_tool_out_keeps_ade847_ids(tmp_path, monkeypatch):
    config, checkpoint, model = _tiny_ade847(tmp_path, monkeypatch)
    out = tmp_path / 'pred'
    run_tool('test', [config, checkpoint, '--out', out,
                      '--work-dir', tmp_path / 'work'])
    images = sorted((tmp_path / 'data/ADE20K_2021_17_01/images_detectron2/'
                     'validation').glob('*.jpg'))
    assert len(list(out.glob('*.png'))) == len(images) == 2
    for image_path in images:
        expected, logits = _predict(model, image_path)
        assert expected.max() > 255  # the case 8-bit files get wrong
        written = _read_both_ways(out / f'{image_path.stem}.png')
        assert written.dtype == np.uint16
        # Two fp32 runs of the same model on the same input may round their
        # reductions differently (batching, threads): pixels whose top-2
        # logits are closer than 256 eps x their size (reductions of at most
        # a few hundred terms in this net) could flip and are not compared.
        tol = 256 * torch.finfo(torch.float32).eps * \
            logits.max(dim=0).values.abs().max()
        assert_equal_where_decided(written, expected,
                                   decided_pixels(logits, tol),
                                   min_fraction=0.9)
