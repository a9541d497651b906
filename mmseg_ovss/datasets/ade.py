"""ADE20K with 150 classes (SceneParsing) and 847 classes (ADE20K 2021)."""
from mmseg.datasets import ADE20KDataset, BaseSegDataset
from mmseg.registry import DATASETS
from mmseg_ovss.datasets.checked_dataset import CheckedDatasetMixin
from mmseg_ovss.datasets.large_vocabularies import ADE847_CLASSES


@DATASETS.register_module()
class ADE20K150Dataset(CheckedDatasetMixin, ADE20KDataset):
    """ADE20K SceneParsing, 150 classes; 0 ("other") ignored (val: 2000)."""
    LAYOUT = """ade/ADEChallengeData2016/
    images/validation/ADE_val_<n>.jpg
    annotations/validation/ADE_val_<n>.png  (0 = other, 1..150)
    (training/ likewise for training)"""
    ROOT_NAME = 'ade/ADEChallengeData2016'


@DATASETS.register_module()
class ADE20K847Dataset(CheckedDatasetMixin, BaseSegDataset):
    """ADE20K-847 (ADE20K_2021_17_01 val, 2000 images), train ids 0..846.

    Images and uint16 TIFF labels as detectron2/CAT-Seg prepare them (short
    side at most 512), unlabelled pixels 65535 = the ignore index. Load them
    with ``LoadCheckedAnnotations``.
    """
    METAINFO = dict(classes=ADE847_CLASSES)
    LAYOUT = """ADE20K_2021_17_01/
    images_detectron2/validation/<name>.jpg
    annotations_detectron2/validation/<name>.tif  (uint16, 65535 unlabelled)"""
    ROOT_NAME = 'ADE20K_2021_17_01'
    PREPARE_HINT = ('Make the images and uint16 TIFFs with '
                    'tools/dataset_converters/ade20k_847.py')

    def __init__(self,
                 img_suffix='.jpg',
                 seg_map_suffix='.tif',
                 ignore_index=65535,
                 **kwargs) -> None:
        super().__init__(
            img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
            ignore_index=ignore_index, **kwargs)
