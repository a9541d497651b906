"""PASCAL Context: 60 classes (with background), 59, and the full 459."""
from mmseg.datasets import (BaseSegDataset, PascalContextDataset,
                            PascalContextDataset59)
from mmseg.registry import DATASETS
from mmseg_ovss.datasets.checked_dataset import CheckedDatasetMixin
from mmseg_ovss.datasets.large_vocabularies import PC459_CLASSES

CONTEXT_LAYOUT = """VOCdevkit/VOC2010/
    JPEGImages/<id>.jpg
    SegmentationClassContext/<id>.png      (PC60/PC59: 0 = background)
    ImageSets/SegmentationContext/val.txt  (train.txt for training)
    annotations_detectron2/pc459_val/<id>.tif  (PC459: uint16, 65535 none)"""


@DATASETS.register_module()
class PascalContext60Dataset(CheckedDatasetMixin, PascalContextDataset):
    """PASCAL Context, 60 classes including background = 0 (val: 5105)."""
    LAYOUT = CONTEXT_LAYOUT
    ROOT_NAME = 'VOCdevkit/VOC2010'


@DATASETS.register_module()
class PascalContext59Dataset(CheckedDatasetMixin, PascalContextDataset59):
    """PASCAL Context, 59 classes; background (0) ignored."""
    LAYOUT = CONTEXT_LAYOUT
    ROOT_NAME = 'VOCdevkit/VOC2010'


@DATASETS.register_module()
class PascalContext459Dataset(CheckedDatasetMixin, BaseSegDataset):
    """PASCAL Context with its full 459 classes (train ids 0..458).

    Labels are uint16 TIFFs as detectron2/CAT-Seg prepare them (label id of
    the release minus one), unlabelled pixels 65535, which is the ignore
    index. Load them with ``LoadCheckedAnnotations`` (not mmseg's
    ``LoadAnnotations``, which casts to uint8).
    """
    METAINFO = dict(classes=PC459_CLASSES)
    LAYOUT = CONTEXT_LAYOUT
    ROOT_NAME = 'VOCdevkit/VOC2010'
    PREPARE_HINT = ('Make the uint16 TIFFs with '
                    'tools/dataset_converters/pascal_context_459.py')

    def __init__(self,
                 ann_file='',
                 img_suffix='.jpg',
                 seg_map_suffix='.tif',
                 ignore_index=65535,
                 **kwargs) -> None:
        super().__init__(
            ann_file=ann_file, img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix, ignore_index=ignore_index,
            **kwargs)
