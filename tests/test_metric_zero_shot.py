"""ZeroShotIoUMetric against values computed by hand."""
import math
from pathlib import Path

import pytest
import torch

import mmseg_ovss  # noqa: F401
from mmseg.registry import METRICS
from mmseg_ovss.evaluation.zero_shot_metric import ZeroShotIoUMetric
from mmseg_ovss.utils.errors import OVSSConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]

# Ten pixels, four classes, one ignored pixel (255).
GT = [0, 0, 1, 1, 2, 2, 3, 3, 255, 0]
PRED = [0, 1, 1, 1, 2, 3, 3, 0, 2, 0]
# By hand (ignored pixel dropped):
#   class 0: I=2 (px 0, 9), GT=3, P=3 -> U=4, IoU 1/2
#   class 1: I=2, GT=2, P=3 -> U=3, IoU 2/3
#   class 2: I=1, GT=2, P=1 -> U=2, IoU 1/2
#   class 3: I=1, GT=2, P=2 -> U=3, IoU 1/3
#   pAcc = 6/9; mIoU = 2/4; seen {0,1}: 7/12; unseen {2,3}: 5/12;
#   hIoU = 2 (7/12)(5/12) / 1 = 35/72
HAND = dict(pAcc=66.67, mIoU=50.0, mIoU_seen=58.33, mIoU_unseen=41.67,
            hIoU=48.61)


def _sample(gt, pred):
    shape = (1, 1, len(gt))
    return dict(gt_sem_seg=dict(data=torch.tensor(gt).view(shape)),
                pred_sem_seg=dict(data=torch.tensor(pred).view(shape)))


def _evaluate(metric, classes, pairs):
    metric.dataset_meta = dict(classes=classes)
    for gt, pred in pairs:
        metric.process({}, [_sample(gt, pred)])
    return metric.evaluate(len(pairs))


def test_hand_computed_values_in_one_image():
    metric = ZeroShotIoUMetric(unseen_ids=[2, 3])
    result = _evaluate(metric, ('a', 'b', 'c', 'd'), [(GT, PRED)])
    for key, value in HAND.items():
        assert result[key] == pytest.approx(value, abs=1e-2), key
    assert result['aAcc'] == result['pAcc']


def test_totals_accumulate_over_images():
    """Two halves give the same scores as one image: IoU from totals."""
    metric = ZeroShotIoUMetric(unseen_ids=[2, 3])
    result = _evaluate(metric, ('a', 'b', 'c', 'd'),
                       [(GT[:5], PRED[:5]), (GT[5:], PRED[5:])])
    for key, value in HAND.items():
        assert result[key] == pytest.approx(value, abs=1e-2), key


def test_absent_class_is_left_out_and_false_positive_counts():
    # class 3 absent everywhere (NaN, skipped); class 2 only predicted (IoU 0)
    gt = [0, 0, 1, 1]
    pred = [0, 0, 1, 2]
    metric = ZeroShotIoUMetric(unseen_ids=[2, 3])
    result = _evaluate(metric, ('a', 'b', 'c', 'd'), [(gt, pred)])
    # seen: IoU0 = 1, IoU1 = 1/2 -> 75; unseen: IoU2 = 0 -> 0; hIoU = 0
    assert result['mIoU_seen'] == pytest.approx(75.0)
    assert result['mIoU_unseen'] == 0.0
    assert result['hIoU'] == 0.0
    assert result['mIoU'] == pytest.approx(50.0)  # (1 + 1/2 + 0) / 3
    assert result['pAcc'] == pytest.approx(75.0)


def test_split_file_from_config_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metric = METRICS.build(dict(type='ZeroShotIoUMetric',
                                split='data/splits/voc_15_5.json'))
    assert metric.unseen_ids == [15, 16, 17, 18, 19]
    from mmseg_ovss.datasets.voc import PascalVOC20Dataset
    classes = PascalVOC20Dataset.METAINFO['classes']
    gt = list(range(20))
    pred = list(range(15)) + [0] * 5  # every unseen pixel missed
    result = _evaluate(metric, classes, [(gt, pred)])
    assert result['mIoU_seen'] == pytest.approx(100 * (14 + 1 / 6) / 15,
                                                abs=1e-2)
    assert result['mIoU_unseen'] == 0.0 and result['hIoU'] == 0.0
    assert math.isclose(result['pAcc'], 75.0)


def test_split_of_another_dataset_is_refused():
    metric = ZeroShotIoUMetric(split='data/splits/voc_15_5.json')
    from mmseg.datasets import PascalVOCDataset
    with pytest.raises(OVSSConfigError, match='20 classes.*21 classes'):
        _evaluate(metric, PascalVOCDataset.METAINFO['classes'],
                  [([0, 1], [0, 1])])


def test_bad_arguments_are_refused():
    with pytest.raises(OVSSConfigError, match='exactly one of'):
        ZeroShotIoUMetric()
    with pytest.raises(OVSSConfigError, match='exactly one of'):
        ZeroShotIoUMetric(split='data/splits/voc_15_5.json', unseen_ids=[1])
    metric = ZeroShotIoUMetric(unseen_ids=[7])
    with pytest.raises(OVSSConfigError, match=r'unseen ids \[7\]'):
        _evaluate(metric, ('a', 'b'), [([0, 1], [0, 1])])


def test_metric_from_a_config_inheriting_a_dataset_base(tmp_path):
    from mmengine.config import Config
    from mmengine.evaluator import Evaluator
    from mmseg.utils import register_all_modules
    from mmseg_ovss.datasets.voc import PascalVOC20Dataset
    register_all_modules(init_default_scope=True)
    base = REPO_ROOT / 'configs/_base_/datasets/voc20.py'
    config = tmp_path / 'zero_shot_voc.py'
    config.write_text(
        f"_base_ = ['{base.as_posix()}']\n"
        "test_evaluator = dict(type='ZeroShotIoUMetric',\n"
        "                      split='data/splits/voc_15_5.json')\n")
    cfg = Config.fromfile(config)
    assert cfg.test_evaluator.ignore_index == 255  # merged with the base
    evaluator = Evaluator(cfg.test_evaluator)
    evaluator.dataset_meta = PascalVOC20Dataset.METAINFO
    gt = [15, 16, 0, 1, 255]
    evaluator.process([_sample(gt, [15, 0, 0, 1, 3])])
    result = evaluator.evaluate(1)
    # the ignored pixel's prediction (3) does not count;
    # seen: 0 -> I1/U2, 1 -> 1; unseen: 15 -> 1, 16 -> 0
    assert result['mIoU_seen'] == pytest.approx(75.0)
    assert result['mIoU_unseen'] == pytest.approx(50.0)
    assert result['hIoU'] == pytest.approx(60.0)  # 2 .75 .5 / 1.25
    assert result['pAcc'] == pytest.approx(75.0)
