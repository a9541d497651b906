"""The dataset converters on small generated inputs in the source layouts."""
import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_converter(name):
    path = REPO_ROOT / f'tools/dataset_converters/{name}.py'
    spec = importlib.util.spec_from_file_location(f'converter_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('name', ('coco_object', 'pascal_context_459',
                                  'ade20k_847'))
def test_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        load_converter(name).main(['--help'])
    assert info.value.code == 0
    assert 'usage' in capsys.readouterr().out


def test_coco_object_from_stuffthingmaps(tmp_path):
    converter = load_converter('coco_object')
    coco = tmp_path / 'coco_stuff164k'
    (coco / 'annotations/val2017').mkdir(parents=True)
    (coco / 'images/val2017').mkdir(parents=True)
    # raw values: category id - 1; person 0, toothbrush 89, stuff 91..181
    raw = np.array([[0, 1, 12, 89], [91, 181, 255, 0]], dtype=np.uint8)
    Image.fromarray(raw).save(coco / 'annotations/val2017/000000000139.png')
    Image.fromarray(raw).save(  # a mmseg-converted file is skipped
        coco / 'annotations/val2017/000000000139_labelTrainIds.png')
    out = tmp_path / 'coco_object'
    converter.main([str(coco), '-o', str(out)])
    label = np.array(Image.open(
        out / 'annotations/val2017/000000000139_instanceTrainIds.png'))
    # person 1, bicycle 2, stop sign (id 13) 12, toothbrush 80, stuff 0,
    # unlabelled -> background (reference behaviour)
    np.testing.assert_array_equal(label, [[1, 2, 12, 80], [0, 0, 0, 1]])
    assert (out / 'images/val2017').resolve() == (
        coco / 'images/val2017').resolve()
    assert len(list(out.glob('annotations/val2017/*'))) == 1

    lut = converter.stuffthingmap_lut('ignore')
    assert lut[255] == 255 and lut[0] == 1 and lut[100] == 0
    assert sorted(set(lut[:91]) - {255}) == list(range(1, 81))


def test_coco_object_from_instances(tmp_path):
    pytest.importorskip('pycocotools')
    converter = load_converter('coco_object')
    coco = tmp_path / 'coco'
    (coco / 'annotations').mkdir(parents=True)
    (coco / 'images/val2017').mkdir(parents=True)
    square = [[0, 0, 6, 0, 6, 6, 0, 6]]  # polygon x, y
    small = [[1, 1, 5, 1, 5, 5, 1, 5]]
    instances = dict(
        images=[dict(id=7, file_name='000000000007.jpg', height=8, width=8)],
        categories=[dict(id=1, name='person'), dict(id=90, name='toothbrush')],
        annotations=[
            dict(id=1, image_id=7, category_id=1, segmentation=square,
                 area=36.0, bbox=[0, 0, 6, 6], iscrowd=0),
            dict(id=2, image_id=7, category_id=90, segmentation=small,
                 area=16.0, bbox=[1, 1, 4, 4], iscrowd=0)])
    (coco / 'annotations/instances_val2017.json').write_text(
        json.dumps(instances))
    converter.main([str(coco), '-o', str(tmp_path / 'out'),
                    '--source', 'instances'])
    out = tmp_path / 'out/annotations/val2017'
    label = np.array(Image.open(out / '000000000007_instanceTrainIds.png'))
    assert label[0, 5] == 1 and label[3, 3] == 80 and label[7, 7] == 0


def test_pascal_context_459(tmp_path):
    from scipy.io import savemat
    converter = load_converter('pascal_context_459')
    root = tmp_path / 'VOC2010'
    (root / 'trainval').mkdir(parents=True)
    (root / 'ImageSets/SegmentationContext').mkdir(parents=True)
    (root / 'ImageSets/SegmentationContext/val.txt').write_text(
        '2008_000001\n')
    label_map = np.array([[0, 1, 2], [300, 458, 459]], dtype=np.uint16)
    savemat(root / 'trainval/2008_000001.mat', {'LabelMap': label_map})
    assert converter.main([str(root)]) == 1
    out = Image.open(root / 'annotations_detectron2/pc459_val/2008_000001.tif')
    converted = np.array(out)
    assert converted.dtype == np.uint16
    np.testing.assert_array_equal(converted,
                                  [[65535, 0, 1], [299, 457, 458]])
    with pytest.raises(ValueError, match='0..459'):
        converter.label_map_to_train_ids(np.array([[460]]))


def test_ade20k_847(tmp_path):
    converter = load_converter('ade20k_847')
    from mmseg_ovss.datasets.large_vocabularies import ADE847_CATEGORIES
    root = tmp_path / 'ADE20K_2021_17_01'
    folder = 'ADE20K_2021_17_01/images/ADE/validation/misc'
    (tmp_path / folder).mkdir(parents=True)
    wall_index = ADE847_CATEGORIES[0][1]      # 2978 -> train id 0
    last_index = ADE847_CATEGORIES[-1][1]     # 3148 -> train id 846
    indices = np.array([[wall_index, last_index], [0, 5]])  # 0, 5: unused
    seg = np.zeros((2, 2, 3), dtype=np.uint8)
    seg[..., 0] = indices // 256 * 10
    seg[..., 1] = indices % 256
    big = 1024  # resized to short side 512
    seg_big = np.kron(seg, np.ones((big // 2, big // 2 * 3 // 2, 1),
                                   dtype=np.uint8))
    Image.fromarray(seg_big).save(
        tmp_path / folder / 'ADE_val_00000001_seg.png')
    Image.fromarray(np.zeros_like(seg_big)).save(
        tmp_path / folder / 'ADE_val_00000001.jpg')
    with open(root / 'index_ade20k.pkl', 'wb') as f:
        pickle.dump(dict(folder=[folder, folder],
                         filename=['ADE_val_00000001.jpg',
                                   'ADE_train_00000001.jpg']), f)
    assert converter.main([str(root)]) == 1  # validation only by default
    label = np.array(Image.open(
        root / 'annotations_detectron2/validation/ADE_val_00000001.tif'))
    image = Image.open(root / 'images_detectron2/validation/'
                       'ADE_val_00000001.jpg')
    assert label.dtype == np.uint16 and label.shape == (512, 768)
    assert image.size == (768, 512)
    assert label[0, 0] == 0 and label[0, -1] == 846
    assert label[-1, 0] == 65535 and label[-1, -1] == 65535
