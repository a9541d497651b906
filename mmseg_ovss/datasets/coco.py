"""COCO-Object (81 classes with background) and COCO-Stuff 164k (171)."""
from mmseg.datasets import BaseSegDataset, COCOStuffDataset
from mmseg.registry import DATASETS
from mmseg_ovss.datasets.checked_dataset import CheckedDatasetMixin

COCO_OBJECT_LAYOUT = """coco_object/
    images/val2017/<id>.jpg
    annotations/val2017/<id>_instanceTrainIds.png  (0 background, 1..80 things)
    (train2017/ likewise for training)"""

COCO_STUFF_LAYOUT = """coco_stuff164k/
    images/val2017/<id>.jpg
    annotations/val2017/<id>_labelTrainIds.png  (0..170, 255 = unlabelled)
    (train2017/ likewise for training)"""


@DATASETS.register_module()
class COCOObjectDataset(CheckedDatasetMixin, BaseSegDataset):
    """COCO-Object: background (every stuff class) + the 80 COCO things.

    Annotations ``*_instanceTrainIds.png`` are derived from COCO-Stuff 164k by
    ``tools/dataset_converters/coco_object.py``: 0 background, 1..80 things
    in COCO order (val2017: 5000 images).
    """
    METAINFO = dict(
        classes=('background', ) + COCOStuffDataset.METAINFO['classes'][:80],
        palette=[[0, 0, 0]] + COCOStuffDataset.METAINFO['palette'][:80])
    LAYOUT = COCO_OBJECT_LAYOUT
    ROOT_NAME = 'coco_object'
    PREPARE_HINT = ('Make the *_instanceTrainIds.png files with '
                    'tools/dataset_converters/coco_object.py')

    def __init__(self,
                 img_suffix='.jpg',
                 seg_map_suffix='_instanceTrainIds.png',
                 **kwargs) -> None:
        super().__init__(
            img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)


@DATASETS.register_module()
class COCOStuff171Dataset(CheckedDatasetMixin, COCOStuffDataset):
    """COCO-Stuff 164k, 171 classes (val2017: 5000 images)."""
    LAYOUT = COCO_STUFF_LAYOUT
    ROOT_NAME = 'coco_stuff164k'
    PREPARE_HINT = ("Make the *_labelTrainIds.png files with mmseg's "
                    'tools/dataset_converters/coco_stuff164k.py')
