"""PASCAL VOC 2012 with background (VOC21) and without it (VOC20)."""
from mmseg.datasets import PascalVOCDataset
from mmseg.registry import DATASETS
from mmseg_ovss.datasets.checked_dataset import CheckedDatasetMixin

VOC_LAYOUT = """VOCdevkit/VOC2012/
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png        (palette PNG, 0 background, 255 boundary)
    ImageSets/Segmentation/val.txt    (train.txt for training)"""


@DATASETS.register_module()
class PascalVOC21Dataset(CheckedDatasetMixin, PascalVOCDataset):
    """PASCAL VOC 2012, 21 classes, background = 0, ignore 255 (val: 1449)."""
    LAYOUT = VOC_LAYOUT
    ROOT_NAME = 'VOCdevkit/VOC2012'


@DATASETS.register_module()
class PascalVOC20Dataset(CheckedDatasetMixin, PascalVOCDataset):
    """PASCAL VOC 2012 without background: 20 classes, background ignored.

    The same annotation files as VOC21 read with ``reduce_zero_label``:
    background (0) and boundaries (255) become the ignore index, class k
    becomes k - 1.
    """
    METAINFO = dict(
        classes=PascalVOCDataset.METAINFO['classes'][1:],
        palette=PascalVOCDataset.METAINFO['palette'][1:])
    LAYOUT = VOC_LAYOUT
    ROOT_NAME = 'VOCdevkit/VOC2012'

    def __init__(self, ann_file, reduce_zero_label=True, **kwargs) -> None:
        super().__init__(
            ann_file=ann_file, reduce_zero_label=reduce_zero_label, **kwargs)
