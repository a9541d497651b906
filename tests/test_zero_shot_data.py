"""Zero-shot training data: split files, ZeroShotLabels, the vocabulary the
model gets in training, validation and testing (a real mmengine Runner), and
the zero-shot dataset base configs on tiny generated datasets."""
import copy
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.dataset import ConcatDataset
from mmengine.runner import Runner
from PIL import Image

import mmseg_ovss  # noqa: F401  (registers datasets, transforms, metrics)
import mmseg_ovss.testing.vocabulary_model  # noqa: F401  (recording models)
from mmseg.registry import DATASETS, METRICS
from mmseg.utils import register_all_modules
from mmseg_ovss.datasets.coco import COCOStuff171Dataset
from mmseg_ovss.datasets.pascal_context import PascalContext59Dataset
from mmseg_ovss.datasets.voc import PascalVOC20Dataset, PascalVOC21Dataset
from mmseg_ovss.datasets.zero_shot import ZeroShotLabels, load_zero_shot_split
from mmseg_ovss.evaluation.zero_shot_metric import ZeroShotIoUMetric
from mmseg_ovss.models.segmentors.vocabulary_hook import find_zero_shot_labels
from mmseg_ovss.testing.tiny_configs import tiny_segformer_config
from mmseg_ovss.testing.tiny_datasets import (exported_data_root,
                                              make_tiny_dataset)
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

REPO_ROOT = Path(__file__).resolve().parents[1]
ZERO_SHOT_CONFIGS = REPO_ROOT / 'configs/_base_/datasets/zero_shot'
VOC20 = PascalVOC20Dataset.METAINFO['classes']
PC59 = PascalContext59Dataset.METAINFO['classes']
COCO171 = COCOStuff171Dataset.METAINFO['classes']
# split file -> (dataset classes, config stem, reduce_zero_label, unseen
# ids as ZegCLIP / CLIP-RC list them)
SPLITS = {
    'voc_15_5': (VOC20, 'voc20_15-5', True, [15, 16, 17, 18, 19]),
    'coco_stuff_156_15': (COCO171, 'coco_stuff171_156-15', False, [
        19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160]),
    'pc59_49_10': (PC59, 'pc59_49-10', True,
                   [19, 33, 48, 14, 7, 24, 6, 54, 31, 0]),
}
SETTINGS = ('inductive', 'transductive', 'supervised')
LOADER = "dict(type='LoadCheckedAnnotations')"

register_all_modules(init_default_scope=True)


def split_path(name: str) -> str:
    return f'data/splits/{name}.json'


def _add_sbd_augmentation(voc_root: Path) -> None:
    """The SBD-augmented training set in mmseg's layout (aug.txt and
    grayscale SegmentationClassAug PNGs), here the tiny train images."""
    lists = voc_root / 'ImageSets/Segmentation'
    ids = (lists / 'train.txt').read_text().split()
    (lists / 'aug.txt').write_text('\n'.join(ids) + '\n')
    for sample_id in ids:
        label = np.array(
            Image.open(voc_root / 'SegmentationClass' / f'{sample_id}.png'))
        target = voc_root / 'SegmentationClassAug' / f'{sample_id}.png'
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label).save(target)


@pytest.fixture(scope='module')
def zero_shot_data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('zero_shot_data')
    for name in ('voc20', 'pc59', 'coco_stuff171'):
        make_tiny_dataset(name, root, num_images=3)
    _add_sbd_augmentation(root / 'VOCdevkit/VOC2012')
    with exported_data_root(root):
        yield root


def reduced(raw: np.ndarray, reduce_zero_label: bool) -> np.ndarray:
    """A stored label map in class ids (0 -> ignored, k -> k - 1)."""
    raw = raw.astype(np.int64)
    if not reduce_zero_label:
        return raw
    return np.where((raw == 0) | (raw == 255), 255, raw - 1)


def seen_only(label: np.ndarray, seen_ids, ignore_index=255) -> np.ndarray:
    """Inductive labels by hand: seen id k of the split -> its position,
    every other pixel ignored."""
    out = np.full(label.shape, ignore_index, dtype=np.int64)
    for new_id, old_id in enumerate(seen_ids):
        out[label == old_id] = new_id
    return out


# ------------------------------------------------------------- split files
@pytest.mark.parametrize('name', SPLITS)
def test_shipped_split_partitions_its_dataset(name):
    classes, _, _, facts_unseen = SPLITS[name]
    split = load_zero_shot_split(split_path(name))
    assert list(split.unseen_ids) == facts_unseen
    assert split.num_classes == len(classes)
    assert sorted(split.seen_ids + split.unseen_ids) == list(
        range(len(classes)))
    assert list(split.seen_names) == [classes[i] for i in split.seen_ids]
    assert list(split.unseen_names) == [classes[i] for i in facts_unseen]
    assert split.class_names == tuple(classes)
    split.check_classes(classes)  # no error


def test_split_resolves_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    split = load_zero_shot_split('data/splits/voc_15_5.json')
    assert split.path == str(REPO_ROOT / 'data/splits/voc_15_5.json')
    assert split.name == 'voc_15_5' and split.dataset == 'voc20'


def _voc_split_content() -> dict:
    return json.loads((REPO_ROOT / 'data/splits/voc_15_5.json').read_text())


def _edit(content, **changes):
    content = copy.deepcopy(content)
    for key, value in changes.items():
        if value is None:
            del content[key]
        else:
            content[key] = value
    return content


BAD_SPLITS = {
    'missing key': (dict(seen_names=None), r"has no \['seen_names'\]"),
    'repeated and absent id': (
        dict(unseen_ids=[0, 16, 17, 18, 19]),
        r'ids \[0\] occur more than once; ids \[15\] are neither seen nor '
        r'unseen'),
    'id out of range': (dict(unseen_ids=[15, 16, 17, 18, 20]),
                        r'ids \[20\] are outside 0\.\.19'),
    'names per id': (dict(unseen_names=['pottedplant', 'sheep']),
                     r'unseen_names has 2 names for 5 unseen_ids'),
    'string ids': (dict(unseen_ids=['15', '16', '17', '18', '19']),
                   r'unseen_ids must be a non-empty list of integer'),
    'empty unseen': (dict(unseen_ids=[], unseen_names=[]),
                     r'unseen_ids must be a non-empty list'),
    'num_classes': (dict(num_classes='20'), r'num_classes must be an int'),
}


@pytest.mark.parametrize('case', BAD_SPLITS)
def test_bad_split_file_is_refused_naming_it(case, tmp_path):
    changes, message = BAD_SPLITS[case]
    path = tmp_path / 'my_split.json'
    path.write_text(json.dumps(_edit(_voc_split_content(), **changes)))
    with pytest.raises(OVSSDataError, match=message) as info:
        load_zero_shot_split(path)
    assert str(path) in str(info.value)


def test_unreadable_split_files_are_refused(tmp_path):
    with pytest.raises(OVSSDataError, match='not found'):
        load_zero_shot_split(tmp_path / 'absent.json')
    broken = tmp_path / 'broken.json'
    broken.write_text('{"num_classes": 20,')
    with pytest.raises(OVSSDataError, match=f'{broken} is not valid JSON'):
        load_zero_shot_split(broken)
    listed = tmp_path / 'list.json'
    listed.write_text('[1, 2]')
    with pytest.raises(OVSSDataError, match='holds a JSON list'):
        load_zero_shot_split(listed)


def test_split_of_another_dataset_is_refused():
    split = load_zero_shot_split(split_path('voc_15_5'))
    with pytest.raises(OVSSConfigError, match='20 classes.*21 classes'):
        split.check_classes(PascalVOC21Dataset.METAINFO['classes'])
    renamed = list(VOC20)
    renamed[3], renamed[16] = 'ship', 'lamb'
    with pytest.raises(OVSSConfigError,
                       match=r"2 class\(es\).*3: 'boat' in the split, "
                       r"'ship' in the dataset.*16: 'sheep'"):
        split.check_classes(renamed)


# --------------------------------------------------------- ZeroShotLabels
def _results(label: np.ndarray, **extra) -> dict:
    return dict(gt_seg_map=label, seg_fields=['gt_seg_map'],
                seg_map_path='<tiny>.png', **extra)


@pytest.mark.parametrize('name', SPLITS)
def test_inductive_labels_on_tiny_datasets(name, zero_shot_data_root):
    """Loaded uint8 maps of each dataset: unseen -> 255, seen renumbered in
    the split's order, the dtype kept."""
    classes, stem, reduce, unseen = SPLITS[name]
    cfg = Config.fromfile(ZERO_SHOT_CONFIGS / f'{stem}_inductive.py')
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    split = load_zero_shot_split(split_path(name))
    transform = ZeroShotLabels(split=split_path(name))
    loader = dataset.pipeline.transforms[1]
    assert type(loader).__name__ == 'LoadCheckedAnnotations'
    unseen_pixels = seen_pixels = 0
    for index in range(len(dataset)):
        loaded = loader(dict(dataset.get_data_info(index), seg_fields=[]))
        raw = np.array(Image.open(loaded['seg_map_path']))
        ids = reduced(raw, reduce)
        out = transform(loaded)['gt_seg_map']
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, seen_only(ids, split.seen_ids))
        unseen_pixels += np.isin(ids, unseen).sum()
        seen_pixels += np.isin(ids, split.seen_ids).sum()
    assert unseen_pixels and seen_pixels  # both kinds were mapped


@pytest.mark.parametrize('name', SPLITS)
def test_config_pipeline_relabels_the_augmented_labels(
        name, zero_shot_data_root):
    """The whole train pipeline of the inductive config, under one seed,
    with and without ZeroShotLabels: the same crop, relabelled."""
    _, stem, _, _ = SPLITS[name]
    cfg = Config.fromfile(ZERO_SHOT_CONFIGS / f'{stem}_inductive.py')
    plain_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    plain_cfg.pipeline = [t for t in plain_cfg.pipeline
                          if t['type'] != 'ZeroShotLabels']
    assert len(plain_cfg.pipeline) == len(cfg.train_pipeline) - 1
    with_labels = DATASETS.build(cfg.train_dataloader.dataset)
    plain = DATASETS.build(plain_cfg)
    split = load_zero_shot_split(split_path(name))
    for index in range(len(plain)):
        samples = []
        for dataset in (with_labels, plain):
            random.seed(index)
            np.random.seed(index)
            samples.append(dataset[index])
        ours, theirs = samples
        np.testing.assert_array_equal(ours['inputs'], theirs['inputs'])
        expected = seen_only(
            theirs['data_samples'].gt_sem_seg.data[0].numpy(),
            split.seen_ids)
        np.testing.assert_array_equal(
            ours['data_samples'].gt_sem_seg.data[0].numpy(), expected)


def _wide_split(tmp_path, num_classes=300):
    """A > 255-class split with seen ids out of order (file order counts)."""
    rng = np.random.default_rng(0)
    unseen = [3, 150, 256, 257, 299]
    seen = [i for i in range(num_classes) if i not in unseen]
    seen = [int(i) for i in rng.permutation(seen)]
    path = tmp_path / 'wide_295_5.json'
    path.write_text(json.dumps(dict(
        name='wide_295_5', dataset='wide', num_classes=num_classes,
        seen_ids=seen, unseen_ids=unseen,
        seen_names=[f'class {i}' for i in seen],
        unseen_names=[f'class {i}' for i in unseen])))
    return path, seen, unseen


@pytest.mark.parametrize('dtype', (np.uint16, np.int32))
def test_wide_labels(dtype, tmp_path):
    path, seen, unseen = _wide_split(tmp_path)
    rng = np.random.default_rng(1)
    label = rng.integers(0, 300, size=(12, 20)).astype(dtype)
    label[0, :5] = unseen
    label[1, :3] = 65535
    label[2, :2] = (298, 255)
    results = _results(label.copy(), ignore_index=65535, num_classes=300)
    out = ZeroShotLabels(split=str(path), ignore_index=65535)(
        results)['gt_seg_map']
    assert out.dtype == dtype
    expected = np.empty(label.shape, dtype=np.int64)
    position = {old_id: new_id for new_id, old_id in enumerate(seen)}
    for y in range(label.shape[0]):  # by hand, pixel by pixel
        for x in range(label.shape[1]):
            expected[y, x] = position.get(int(label[y, x]), 65535)
    np.testing.assert_array_equal(out, expected)
    assert out[2, 0] == seen.index(298) and out[2, 1] == seen.index(255)

    for setting in ('transductive', 'supervised'):
        kept = ZeroShotLabels(split=str(path), setting=setting,
                              ignore_index=65535)(_results(label.copy()))
        assert kept['gt_seg_map'].dtype == dtype
        np.testing.assert_array_equal(kept['gt_seg_map'], label)


def test_inductive_without_relabelling_keeps_seen_ids():
    label = np.array([[0, 14, 15, 19, 255]], dtype=np.uint8)
    transform = ZeroShotLabels(split=split_path('voc_15_5'), relabel=False)
    out = transform(_results(label))['gt_seg_map']
    np.testing.assert_array_equal(out, [[0, 14, 255, 255, 255]])
    assert transform.training_class_ids == tuple(range(20))
    assert transform.training_split == (tuple(range(15)),
                                        (15, 16, 17, 18, 19))


def test_ignore_index_wider_than_the_map_widens_it():
    """A uint8 map with a 16-bit ignore index: unseen pixels get 65535."""
    label = np.array([[0, 15, 19]], dtype=np.uint8)
    out = ZeroShotLabels(split=split_path('voc_15_5'), ignore_index=65535)(
        _results(label))['gt_seg_map']
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[0, 65535, 65535]])


def test_label_outside_the_split_is_refused():
    transform = ZeroShotLabels(split=split_path('voc_15_5'))
    label = np.array([[0, 20, 254, 255]], dtype=np.uint8)
    with pytest.raises(OVSSDataError,
                       match=r'<tiny>\.png holds value\(s\) 20, 254 that '
                       r'are neither a class id of split voc_15_5 '
                       r'\(0\.\.19.*ignore index 255'):
        transform(_results(label))
    wide = np.array([[0, 300, 70000]], dtype=np.int32)
    with pytest.raises(OVSSDataError, match=r'value\(s\) 300, 70000'):
        transform(_results(wide))
    with pytest.raises(OVSSDataError, match=r'value\(s\) -1'):
        transform(_results(np.array([[-1, 3]], dtype=np.int32)))
    with pytest.raises(OVSSDataError, match='float32 array'):
        transform(_results(np.zeros((2, 2), np.float32)))


def test_transform_configuration_errors():
    split = split_path('voc_15_5')
    with pytest.raises(OVSSConfigError, match="setting='zero-shot'"):
        ZeroShotLabels(split=split, setting='zero-shot')
    with pytest.raises(OVSSConfigError, match='ignore_index=10 .*0..19'):
        ZeroShotLabels(split=split, ignore_index=10)
    transform = ZeroShotLabels(split=split)
    label = np.zeros((2, 2), np.uint8)
    with pytest.raises(OVSSConfigError, match='20 classes.*21 classes'):
        transform(_results(label, num_classes=21))
    with pytest.raises(OVSSConfigError, match='set ignore_index=65535'):
        transform(_results(label, ignore_index=65535))
    with pytest.raises(OVSSConfigError, match='after LoadCheckedAnnotations'):
        transform(dict(img_path='x.jpg', seg_fields=[]))
    assert 'voc_15_5' in repr(transform) and 'inductive' in repr(transform)


# ------------------------------------------------------ dataset configs
@pytest.mark.parametrize('setting', SETTINGS)
@pytest.mark.parametrize('name', SPLITS)
def test_zero_shot_config_builds_its_datasets(name, setting,
                                              zero_shot_data_root):
    classes, stem, _, unseen = SPLITS[name]
    cfg = Config.fromfile(ZERO_SHOT_CONFIGS / f'{stem}_{setting}.py')
    assert cfg.data_root.startswith(str(zero_shot_data_root))
    types = [t['type'] for t in cfg.train_pipeline]
    assert types == [
        'LoadImageFromFile', 'LoadCheckedAnnotations', 'RandomResize',
        'RandomCrop', 'RandomFlip', 'PhotoMetricDistortion',
        'ZeroShotLabels', 'PackSegInputs'
    ]
    resize, crop = cfg.train_pipeline[2], cfg.train_pipeline[3]
    assert resize.scale == (2048, 512) and resize.ratio_range == (0.5, 2.0)
    assert crop.crop_size == (512, 512) and crop.cat_max_ratio == 0.75

    train = DATASETS.build(cfg.train_dataloader.dataset)
    assert len(train) == 3
    labels = find_zero_shot_labels(train)
    assert labels.setting == setting and labels.split.name == name
    assert labels.ignore_index == train.ignore_index == 255
    vocabulary = labels.training_classes(train.metainfo['classes'])
    seen = [c for i, c in enumerate(classes) if i not in unseen]
    num_train = len(seen) if setting == 'inductive' else len(classes)
    if setting == 'inductive':
        assert sorted(vocabulary) == sorted(seen)
    else:
        assert vocabulary == list(classes)
    random.seed(0)
    np.random.seed(0)
    gt = train[0]['data_samples'].gt_sem_seg.data
    assert max(gt.shape[1:]) <= 512  # cropped (a small resize stays small)
    values = set(gt.unique().tolist()) - {255}
    assert values and max(values) < num_train
    if name == 'voc_15_5':  # trained on the SBD-augmented set
        assert train.ann_file.endswith('ImageSets/Segmentation/aug.txt')
        assert train.data_prefix['seg_map_path'].endswith(
            'SegmentationClassAug')

    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    test = Runner.build_dataloader(loader_cfg)
    assert test.dataset.metainfo['classes'] == classes
    batch = next(iter(test))
    assert min(batch['inputs'][0].shape[1:]) == 512
    assert cfg.val_evaluator == cfg.test_evaluator
    metric = METRICS.build(cfg.test_evaluator)
    assert isinstance(metric, ZeroShotIoUMetric)
    assert metric.unseen_ids == unseen and metric.ignore_index == 255


def test_concatenated_training_sets_share_one_transform(zero_shot_data_root):
    cfg = Config.fromfile(ZERO_SHOT_CONFIGS / 'voc20_15-5_inductive.py')
    inductive = DATASETS.build(cfg.train_dataloader.dataset)
    again = DATASETS.build(cfg.train_dataloader.dataset)
    found = find_zero_shot_labels(ConcatDataset([inductive, again]))
    assert found.training_class_ids == tuple(range(15))
    other = Config.fromfile(ZERO_SHOT_CONFIGS / 'voc20_15-5_transductive.py')
    transductive = DATASETS.build(other.train_dataloader.dataset)
    with pytest.raises(OVSSConfigError, match='label classes differently'):
        find_zero_shot_labels(ConcatDataset([inductive, transductive]))


# ------------------------------------------------ DatasetVocabularyHook
def _tiny_run_config(tmp_path, model_type, **kwargs) -> Config:
    cfg = Config.fromstring(
        tiny_segformer_config('zero_shot/voc20_15-5_inductive', 15, LOADER,
                              **kwargs), '.py')
    cfg.model.type = model_type
    cfg.custom_imports = dict(
        imports=['mmseg_ovss', 'mmseg_ovss.testing.vocabulary_model'],
        allow_failed_imports=False)
    cfg.custom_hooks = [dict(type='DatasetVocabularyHook')]
    cfg.work_dir = str(tmp_path / 'work')
    if 'train_cfg' not in cfg:  # a test run: no train/val groups
        for key in ('train_dataloader', 'val_dataloader', 'val_evaluator'):
            cfg[key] = None
        cfg.test_cfg = dict(type='TestLoop')
    return cfg


def test_vocabulary_through_train_val_and_test(zero_shot_data_root,
                                               tmp_path):
    """Inductive VOC 15/5 training with a validation every 2 iterations
    (plain IoU metric: the split comes from the training transform), then a
    test on PASCAL Context 59 (ZeroShotIoUMetric with its own split): what
    the model saw at each loss and predict call."""
    cfg = _tiny_run_config(tmp_path, 'ZeroShotRecordingEncoderDecoder',
                           train_iters=4, checkpoint_interval=4)
    cfg.train_dataloader.dataset.pipeline.insert(
        -1, dict(type='ZeroShotLabels', split=split_path('voc_15_5')))
    cfg.train_cfg.val_interval = 2
    cfg.val_evaluator = dict(type='OVSSIoUMetric', iou_metrics=['mIoU'])
    pc59 = Config.fromfile(ZERO_SHOT_CONFIGS / 'pc59_49-10_inductive.py')
    test_loader = copy.deepcopy(cfg.test_dataloader)
    test_loader.dataset = pc59.test_dataloader.dataset
    test_loader.dataset.pipeline = cfg.test_pipeline
    cfg.test_dataloader = test_loader
    cfg.test_evaluator = pc59.test_evaluator

    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.test()
    assert {'mIoU_seen', 'mIoU_unseen', 'hIoU'} <= set(metrics)

    seen_voc = tuple(VOC20[:15])  # the unseen are the last five
    training = ('loss', seen_voc, (tuple(range(15)), ()))
    val = ('predict', tuple(VOC20), (tuple(range(15)), (15, 16, 17, 18, 19)))
    pc_unseen = (19, 33, 48, 14, 7, 24, 6, 54, 31, 0)
    pc_seen = tuple(i for i in range(59) if i not in pc_unseen)
    test = ('predict', tuple(PC59), (pc_seen, pc_unseen))
    # batch 2 in training; 3 images one by one in val and test
    expected = [training] * 2 + [val] * 3 + [training] * 2 + [val] * 3 + [
        test
    ] * 3
    assert runner.model.vocabulary_log == expected


def test_training_free_model_gets_the_test_classes(zero_shot_data_root,
                                                   tmp_path):
    """A model with set_dataset_classes only (as the training-free
    segmentors): a test run gives it the test dataset's classes."""
    cfg = _tiny_run_config(tmp_path, 'ClassesRecordingEncoderDecoder')
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    assert 'hIoU' in metrics
    assert runner.model.vocabulary_log == [('predict', tuple(VOC20), None)
                                           ] * 3


def test_test_run_takes_the_split_of_the_metric(zero_shot_data_root,
                                                tmp_path):
    """A test-only run: the metric's unseen_ids give the model its split."""
    cfg = _tiny_run_config(tmp_path, 'ZeroShotRecordingEncoderDecoder')
    cfg.test_evaluator = dict(type='ZeroShotIoUMetric',
                              unseen_ids=[2, 5, 19])
    runner = Runner.from_cfg(cfg)
    runner.test()
    seen = tuple(i for i in range(20) if i not in (2, 5, 19))
    assert runner.model.vocabulary_log == [
        ('predict', tuple(VOC20), (seen, (2, 5, 19)))
    ] * 3


def test_evaluation_split_must_fit_the_evaluated_dataset(
        zero_shot_data_root, tmp_path):
    cfg = _tiny_run_config(tmp_path, 'ZeroShotRecordingEncoderDecoder')
    cfg.test_evaluator = dict(type='ZeroShotIoUMetric',
                              split=split_path('pc59_49_10'))
    runner = Runner.from_cfg(cfg)
    with pytest.raises(OVSSConfigError,
                       match=re.escape('is for pc59 (59 classes) but the '
                                       'evaluated dataset has 20 classes')):
        runner.test()
    assert runner.model.vocabulary_log == []
