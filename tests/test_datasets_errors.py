"""Bad data gives a clear error naming the problem and the fix."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

import mmseg_ovss  # noqa: F401
from mmseg.registry import DATASETS
from mmseg.utils import register_all_modules
from mmseg_ovss.testing.tiny_datasets import make_tiny_dataset
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

REPO_ROOT = Path(__file__).resolve().parents[1]

register_all_modules(init_default_scope=True)


def build_test_dataset(name, root, monkeypatch, **overrides):
    monkeypatch.setenv('OVSS_DATA_ROOT', str(root))
    cfg = Config.fromfile(REPO_ROOT / f'configs/_base_/datasets/{name}.py')
    dataset_cfg = cfg.test_dataloader.dataset
    dataset_cfg.update(overrides)
    return DATASETS.build(dataset_cfg)


def test_missing_data_root_names_env_var_and_layout(tmp_path, monkeypatch):
    with pytest.raises(OVSSDataError) as info:
        build_test_dataset('voc21', tmp_path / 'nowhere', monkeypatch)
    message = str(info.value)
    assert 'data root' in message and 'does not exist' in message
    assert 'OVSS_DATA_ROOT' in message and '--cfg-options' in message
    assert 'SegmentationClass/' in message  # the expected layout


def test_missing_data_root_without_env_var(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('OVSS_DATA_ROOT', raising=False)
    cfg = Config.fromfile(REPO_ROOT / 'configs/_base_/datasets/ade150.py')
    with pytest.raises(OVSSDataError, match='OVSS_DATA_ROOT is not set'):
        DATASETS.build(cfg.test_dataloader.dataset)


def test_missing_annotation_folder_points_to_converter(tmp_path, monkeypatch):
    data_root = Path(make_tiny_dataset('ade847', tmp_path))
    shutil.rmtree(data_root / 'annotations_detectron2')
    with pytest.raises(OVSSDataError) as info:
        build_test_dataset('ade847', tmp_path, monkeypatch)
    assert 'annotation folder' in str(info.value)
    assert 'tools/dataset_converters/ade20k_847.py' in str(info.value)


def test_missing_split_file(tmp_path, monkeypatch):
    data_root = Path(make_tiny_dataset('pc59', tmp_path))
    (data_root / 'ImageSets/SegmentationContext/val.txt').unlink()
    with pytest.raises(OVSSDataError, match='split file .*val.txt'):
        build_test_dataset('pc59', tmp_path, monkeypatch)


def test_no_matching_images(tmp_path, monkeypatch):
    data_root = Path(make_tiny_dataset('cityscapes', tmp_path))
    for path in (data_root / 'leftImg8bit/val').rglob('*.png'):
        path.rename(path.with_suffix('.jpg'))
    with pytest.raises(OVSSDataError, match='no image matching'):
        build_test_dataset('cityscapes', tmp_path, monkeypatch)


def test_image_without_annotation(tmp_path, monkeypatch):
    data_root = Path(make_tiny_dataset('coco_object', tmp_path))
    next((data_root / 'annotations/val2017').glob('*.png')).unlink()
    with pytest.raises(OVSSDataError, match='1 of 2 image.*_instanceTrainIds'):
        build_test_dataset('coco_object', tmp_path, monkeypatch)


def test_unreadable_image_is_named(tmp_path, monkeypatch):
    data_root = Path(make_tiny_dataset('voc21', tmp_path))
    broken = data_root / 'JPEGImages/2007_000001.jpg'
    broken.write_bytes(b'not a jpeg at all')
    dataset = build_test_dataset('voc21', tmp_path, monkeypatch)
    with pytest.raises(OVSSDataError) as info:
        dataset[0]
    assert str(broken) in str(info.value)
    assert 'cannot be decoded' in str(info.value)
    dataset[1]  # the other image still loads


def test_unreadable_annotation_is_named(tmp_path, monkeypatch):
    data_root = Path(make_tiny_dataset('pc459', tmp_path))
    broken = data_root / 'annotations_detectron2/pc459_val/2008_000001.tif'
    broken.write_bytes(b'\x00' * 10)
    dataset = build_test_dataset('pc459', tmp_path, monkeypatch)
    with pytest.raises(OVSSDataError, match=f'{broken}.*cannot be decoded'):
        dataset[0]


def test_colour_annotation_is_refused(tmp_path, monkeypatch):
    data_root = Path(make_tiny_dataset('cityscapes', tmp_path))
    label = next((data_root / 'gtFine/val').rglob('*labelTrainIds.png'))
    Image.open(label).convert('RGB').save(label)
    dataset = build_test_dataset('cityscapes', tmp_path, monkeypatch)
    with pytest.raises(OVSSDataError, match='RGB image, not a single-channel'):
        dataset[0]


def test_label_out_of_range_names_file_value_and_cause(tmp_path, monkeypatch):
    data_root = Path(make_tiny_dataset('voc21', tmp_path))
    path = data_root / 'SegmentationClass/2007_000001.png'
    image = Image.open(path)
    label = np.array(image)
    label[0, -1] = 37  # neither a VOC class nor 255
    patched = Image.fromarray(label, mode='P')
    patched.putpalette(image.getpalette())
    patched.save(path)
    dataset = build_test_dataset('voc21', tmp_path, monkeypatch)
    with pytest.raises(OVSSDataError) as info:
        dataset[0]
    message = str(info.value)
    assert str(path) in message and 'label value(s) 37' in message
    assert '0..20' in message and 'ignore index 255' in message
    assert 'Likely cause' in message


def test_one_based_labels_suggest_reduce_zero_label(tmp_path, monkeypatch):
    make_tiny_dataset('ade150', tmp_path)
    dataset = build_test_dataset('ade150', tmp_path, monkeypatch,
                                 reduce_zero_label=False)
    with pytest.raises(OVSSDataError, match='1-based.*reduce_zero_label=True'):
        dataset[0]


def test_wide_labels_refuse_mmseg_loader(tmp_path, monkeypatch):
    make_tiny_dataset('pc459', tmp_path)
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                dict(type='PackSegInputs')]
    with pytest.raises(OVSSConfigError, match='casts labels to uint8'):
        build_test_dataset('pc459', tmp_path, monkeypatch, pipeline=pipeline)


def test_wide_labels_refuse_mmseg_loader_inside_test_time_aug(
        tmp_path, monkeypatch):
    """mmseg's tta_pipeline form: LoadAnnotations in a TestTimeAug branch."""
    make_tiny_dataset('pc459', tmp_path)
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='TestTimeAug', transforms=[
                    [dict(type='RandomFlip', prob=0.,
                          direction='horizontal')],
                    [dict(type='LoadAnnotations')],
                    [dict(type='PackSegInputs')]])]
    with pytest.raises(OVSSConfigError, match='casts labels to uint8'):
        build_test_dataset('pc459', tmp_path, monkeypatch, pipeline=pipeline)


def test_label_of_another_size_names_both_files(tmp_path, monkeypatch):
    data_root = Path(make_tiny_dataset('coco_stuff171', tmp_path))
    label_path = next((data_root / 'annotations/val2017').glob('*.png'))
    image_path = (data_root / 'images/val2017' /
                  label_path.name.replace('_labelTrainIds.png', '.jpg'))
    label = Image.open(label_path)
    label.resize((48, 32), Image.NEAREST).save(label_path)  # image: 96x64
    dataset = build_test_dataset('coco_stuff171', tmp_path, monkeypatch)
    index = [dataset.get_data_info(i)['seg_map_path']
             for i in range(len(dataset))].index(str(label_path))
    with pytest.raises(OVSSDataError) as info:
        dataset[index]
    message = str(info.value)
    assert f'image {image_path} is 96x64' in message
    assert f'annotation {label_path} is 48x32' in message
    assert 'converter' in message and 'EXIF' not in message


def _save_with_orientation(path, orientation):
    image = Image.open(path)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), quality=95)


# the fix the EXIF errors give: keep the stored pixel order
IGNORE_ORIENTATION_PIPELINE = [
    dict(type='LoadImageFromFile', color_type='color_ignore_orientation'),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs')]


def test_exif_rotated_photo_is_explained(tmp_path, monkeypatch):
    """LoadImageFromFile turns an Orientation=6 JPEG upright (64x96 stored
    -> 96x64 loaded); the label map is read as stored."""
    data_root = Path(make_tiny_dataset('voc21', tmp_path))
    image_path = data_root / 'JPEGImages/2007_000001.jpg'
    _save_with_orientation(image_path, 6)
    dataset = build_test_dataset('voc21', tmp_path, monkeypatch)
    with pytest.raises(OVSSDataError) as info:
        dataset[0]
    message = str(info.value)
    assert f'image {image_path} is 64x96' in message
    assert 'SegmentationClass/2007_000001.png is 96x64' in message
    assert 'Orientation=6' in message
    assert "color_type='color_ignore_orientation'" in message
    # the fix the message gives: keep the stored pixel order
    dataset = build_test_dataset('voc21', tmp_path, monkeypatch,
                                 pipeline=IGNORE_ORIENTATION_PIPELINE)
    sample = dataset[0]['data_samples']
    assert tuple(sample.ori_shape) == sample.gt_sem_seg.shape == (64, 96)


def test_size_keeping_exif_rotation_warns(tmp_path, monkeypatch):
    """A 180-degree tag keeps the size: only a warning can point at it."""
    data_root = Path(make_tiny_dataset('voc21', tmp_path))
    image_path = data_root / 'JPEGImages/2007_000002.jpg'
    _save_with_orientation(image_path, 3)
    dataset = build_test_dataset('voc21', tmp_path, monkeypatch)
    with pytest.warns(UserWarning, match=r'Orientation=3 \(rotated 180'):
        dataset[1]
    dataset = build_test_dataset('voc21', tmp_path, monkeypatch,
                                 pipeline=IGNORE_ORIENTATION_PIPELINE)
    assert not dataset.applies_exif_orientation
