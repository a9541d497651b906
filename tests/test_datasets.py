"""Every dataset base config loads its tiny generated dataset correctly."""
import json
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.runner import Runner
from PIL import Image

import mmseg_ovss  # noqa: F401  (registers datasets, transforms, metrics)
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import DATASETS
from mmseg.utils import register_all_modules

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ('voc21', 'voc20', 'pc60', 'pc59', 'pc459', 'coco_object',
              'coco_stuff171', 'ade150', 'ade847', 'cityscapes')
# per benchmark: (classes, ignore index, reduce_zero_label, short side)
EXPECTED = {
    'voc21': (21, 255, False, 448),
    'voc20': (20, 255, True, 448),
    'pc60': (60, 255, False, 448),
    'pc59': (59, 255, True, 448),
    'pc459': (459, 65535, False, 448),
    'coco_object': (81, 255, False, 448),
    'coco_stuff171': (171, 255, False, 448),
    'ade150': (150, 255, True, 448),
    'ade847': (847, 65535, False, 448),
    'cityscapes': (19, 255, False, 560),
}
HAS_TRAIN = ('voc21', 'voc20', 'pc60', 'pc59', 'coco_object', 'coco_stuff171',
             'ade150', 'cityscapes')

register_all_modules(init_default_scope=True)


def base_config(name: str) -> Config:
    return Config.fromfile(REPO_ROOT / f'configs/_base_/datasets/{name}.py')


def expected_label(raw: np.ndarray, reduce_zero_label: bool,
                   ignore_index: int) -> np.ndarray:
    """The ground truth a dataset must yield, computed directly."""
    raw = raw.astype(np.int64)
    if not reduce_zero_label:
        return raw
    return np.where((raw == 0) | (raw == ignore_index), ignore_index, raw - 1)


@pytest.mark.parametrize('name', BENCHMARKS)
def test_base_config_loads_tiny_dataset(name, tiny_data_root):
    num_classes, ignore_index, reduce, short_side = EXPECTED[name]
    cfg = base_config(name)
    assert cfg.data_root.startswith(str(tiny_data_root))
    assert cfg.test_evaluator.ignore_index == ignore_index
    loader_cfg = cfg.test_dataloader.copy()
    loader_cfg.update(num_workers=0, persistent_workers=False)
    loader = Runner.build_dataloader(loader_cfg)
    dataset = loader.dataset
    assert len(dataset) == 2
    assert len(dataset.metainfo['classes']) == num_classes
    assert dataset.ignore_index == ignore_index
    assert dataset.reduce_zero_label == reduce

    seen_values = set()
    for batch in loader:
        inputs = batch['inputs'][0]
        sample = batch['data_samples'][0]
        assert min(inputs.shape[1:]) == short_side
        raw = np.array(Image.open(sample.seg_map_path))
        gt = sample.gt_sem_seg.data[0].numpy()
        assert gt.shape == raw.shape == tuple(sample.ori_shape)
        np.testing.assert_array_equal(
            gt, expected_label(raw, reduce, ignore_index))
        valid = gt[gt != ignore_index]
        assert valid.size and valid.max() < num_classes
        seen_values.update(np.unique(gt).tolist())
    if num_classes > 255:  # the wide ids survive loading
        assert max(v for v in seen_values if v != ignore_index) > 255


@pytest.mark.parametrize('name', ('voc21', 'voc20', 'pc59', 'ade150'))
def test_annotations_equal_mmseg_loader_on_8bit_labels(name, tiny_data_root):
    """LoadCheckedAnnotations == mmseg's LoadAnnotations where mmseg works."""
    dataset_cfg = base_config(name).test_dataloader.dataset
    dataset = DATASETS.build(dataset_cfg)
    info = dataset.get_data_info(0)
    ours = dataset.pipeline.transforms[2](dict(info, seg_fields=[]))
    theirs = LoadAnnotations()(dict(info, seg_fields=[]))
    assert ours['gt_seg_map'].dtype == theirs['gt_seg_map'].dtype == np.uint8
    np.testing.assert_array_equal(ours['gt_seg_map'], theirs['gt_seg_map'])


@pytest.mark.parametrize('name', HAS_TRAIN)
def test_train_split_loads(name, tiny_data_root):
    cfg = base_config(name)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    assert len(dataset) == 2
    sample = dataset[0]
    height, width = sample['inputs'].shape[1:]
    assert height <= cfg.train_crop_size[0] and width <= cfg.train_crop_size[1]
    gt = sample['data_samples'].gt_sem_seg.data
    assert gt.shape[1:] == (height, width)


def test_data_root_from_env_and_cfg_options(tmp_path, monkeypatch):
    monkeypatch.setenv('OVSS_DATA_ROOT', str(tmp_path / 'somewhere'))
    cfg = base_config('voc21')
    expected = f'{tmp_path}/somewhere/VOCdevkit/VOC2012'
    assert cfg.data_root == expected
    assert cfg.test_dataloader.dataset.data_root == expected
    assert cfg.train_dataloader.dataset.data_root == expected
    cfg.merge_from_dict({'test_dataloader.dataset.data_root': '/x/VOC2012'})
    assert cfg.test_dataloader.dataset.data_root == '/x/VOC2012'
    monkeypatch.delenv('OVSS_DATA_ROOT')
    assert base_config('ade847').data_root == 'data/ADE20K_2021_17_01'


@pytest.mark.parametrize('name', BENCHMARKS)
def test_class_name_file_matches_metainfo(name):
    dataset_type = base_config(name).dataset_type
    classes = DATASETS.get(dataset_type).METAINFO['classes']
    lines = (REPO_ROOT / f'data/class_names/{name}.txt').read_text(
    ).splitlines()
    assert len(lines) == len(classes)
    assert all(line.strip() and line == line.strip() for line in lines)
    if name in ('pc59', 'pc459', 'coco_stuff171', 'ade150', 'ade847'):
        # these files keep the official names (first synonym)
        for line, cls in zip(lines, classes):
            assert line.split(', ')[0] == cls.split(', ')[0].strip()


def test_background_and_name_conventions():
    read = lambda n: (REPO_ROOT / f'data/class_names/{n}.txt').read_text(  # noqa
    ).splitlines()
    voc21, coco_object = read('voc21'), read('coco_object')
    background = voc21[0].split(', ')
    assert len(background) == 26 and background[0] == 'sky'
    assert coco_object[0] == voc21[0]
    assert read('pc60')[0] == 'background'
    assert voc21[4] == 'ship' and voc21[11] == 'table'
    assert voc21[15].startswith('person, person in shirt')
    assert voc21[20].split(', ')[0] == 'television monitor'
    assert read('voc20') == voc21[1:]
    assert 'trafficlight' in read('cityscapes')


@pytest.mark.parametrize('split_name', ('voc_15_5', 'pc59_49_10',
                                        'coco_stuff_156_15'))
def test_split_files_agree_with_metainfo(split_name):
    split = json.loads(
        (REPO_ROOT / f'data/splits/{split_name}.json').read_text())
    dataset_type = base_config(split['dataset']).dataset_type
    classes = [c.strip() for c in
               DATASETS.get(dataset_type).METAINFO['classes']]
    assert split['num_classes'] == len(classes)
    assert [classes[i] for i in split['unseen_ids']] == split['unseen_names']
    assert [classes[i] for i in split['seen_ids']] == split['seen_names']
    assert sorted(split['seen_ids'] + split['unseen_ids']) == list(
        range(len(classes)))


def test_zero_shot_split_sizes_and_ids():
    """The unseen classes of the ZegCLIP / CLIP-RC splits (ZegCLIP,
    ZiqinZhou66/ZegCLIP, configs/voc12/vpt_seg_zero_vit-b_512x512_20k_12_10.py
    and configs/coco/vpt_seg_zero_vit-b_512x512_80k_12_100_multi.py; the
    PASCAL Context 49/10 split of the CLIP-RC paper)."""
    load = lambda n: json.loads(  # noqa
        (REPO_ROOT / f'data/splits/{n}.json').read_text())
    assert load('voc_15_5')['unseen_names'] == [
        'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor']
    assert load('pc59_49_10')['unseen_ids'] == [
        19, 33, 48, 14, 7, 24, 6, 54, 31, 0]
    assert load('coco_stuff_156_15')['unseen_ids'] == [
        19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160]
    assert len(load('coco_stuff_156_15')['seen_ids']) == 156


def test_class_subset_of_a_wide_dataset(tiny_data_root):
    """metainfo=dict(classes=subset): dropped classes become 65535, not 255."""
    dataset_cfg = base_config('pc459').test_dataloader.dataset
    keep = ('aeroplane', 'wool')  # ids 1 and 458
    dataset_cfg.update(metainfo=dict(classes=keep))
    dataset = DATASETS.build(dataset_cfg)
    sample = dataset[0]['data_samples']
    raw = np.array(Image.open(sample.seg_map_path)).astype(np.int64)
    expected = np.full_like(raw, 65535)
    expected[raw == 1] = 0
    expected[raw == 458] = 1
    np.testing.assert_array_equal(sample.gt_sem_seg.data[0].numpy(), expected)


def test_wide_class_subset_keeping_more_than_255_classes(tiny_data_root):
    """With more than 255 classes kept, 255 is a kept class's id: a dropped
    class still becomes the ignore index 65535, not that class."""
    dataset_cfg = base_config('pc459').test_dataloader.dataset
    full = DATASETS.build(dataset_cfg.copy())
    keep = full.metainfo['classes'][1:]  # drop id 0, keep 458
    dataset_cfg.update(metainfo=dict(classes=keep))
    dataset = DATASETS.build(dataset_cfg)
    sample = dataset[0]['data_samples']
    raw = np.array(Image.open(sample.seg_map_path)).astype(np.int64)
    assert (raw == 0).any(), 'the tiny label map lacks the dropped class'
    expected = np.where((raw == 0) | (raw == 65535), 65535, raw - 1)
    np.testing.assert_array_equal(sample.gt_sem_seg.data[0].numpy(), expected)
    assert len(dataset.metainfo['palette']) == len(keep)


@pytest.mark.parametrize('name', ['ade150', 'coco_stuff171'])
def test_class_subset_keeps_the_kept_classes_colours(name, tiny_data_root):
    """A subset's palette is its classes' own colours in the new order."""
    dataset_cfg = base_config(name).test_dataloader.dataset
    full = DATASETS.build(dataset_cfg.copy()).metainfo
    keep = (full['classes'][5], full['classes'][2], full['classes'][-1])
    dataset_cfg.update(metainfo=dict(classes=keep))
    palette = DATASETS.build(dataset_cfg).metainfo['palette']
    colours = {c: p for c, p in zip(full['classes'], full['palette'])}
    assert [list(p) for p in palette] == [list(colours[c]) for c in keep]
