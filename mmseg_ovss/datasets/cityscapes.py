"""Cityscapes, 19 evaluation classes."""
from mmseg.datasets import CityscapesDataset
from mmseg.registry import DATASETS
from mmseg_ovss.datasets.checked_dataset import CheckedDatasetMixin


@DATASETS.register_module()
class Cityscapes19Dataset(CheckedDatasetMixin, CityscapesDataset):
    """Cityscapes fine annotations, 19 train ids, 255 ignored (val: 500)."""
    LAYOUT = """cityscapes/
    leftImg8bit/val/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/val/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png
    (train/ likewise for training)"""
    ROOT_NAME = 'cityscapes'
    PREPARE_HINT = ("Make the *_labelTrainIds.png files with mmseg's "
                    'tools/dataset_converters/cityscapes.py')
