"""Annotation loading for any number of classes, with label range and size
checks."""
import warnings
from typing import Dict, Optional

import numpy as np
from mmcv.transforms import BaseTransform

from mmseg.registry import TRANSFORMS
from mmseg_ovss.datasets.label_io import (EXIF_ORIENTATIONS,
                                          SWAPPING_ORIENTATIONS,
                                          describe_size_mismatch,
                                          exif_orientation, read_label_map)
from mmseg_ovss.utils.errors import OVSSDataError

#: Images already warned about (one warning per file and process).
_WARNED_ORIENTATION = set()


def reduce_zero_label(label: np.ndarray, ignore_index: int) -> np.ndarray:
    """0 becomes ``ignore_index``, the ignore index stays, others shift by -1.

    For 8-bit maps with ignore 255 this is exactly mmseg's ``LoadAnnotations``
    rule (0 -> 255, 255 -> 255, k -> k - 1), for any bit depth.
    """
    ignored = (label == 0) | (label == ignore_index)
    reduced = label - 1
    reduced[ignored] = ignore_index
    return reduced


def apply_label_map(label: np.ndarray,
                    label_map: Dict[int, int]) -> np.ndarray:
    """Rename ids with a lookup table (one pass, no per-class loop)."""
    size = int(max(label.max(initial=0), max(label_map))) + 1
    table = np.arange(size, dtype=np.int64)
    for old_id, new_id in label_map.items():
        table[old_id] = new_id
    return table[label]


def smallest_label_dtype(num_classes: int, ignore_index: int):
    """uint8 when every id fits (mmseg's own dtype), else uint16."""
    return np.uint8 if max(num_classes - 1, ignore_index) <= 255 else np.uint16


@TRANSFORMS.register_module()
class LoadCheckedAnnotations(BaseTransform):
    """mmseg's ``LoadAnnotations`` for any bit depth, checking label values.

    mmseg's ``LoadAnnotations`` casts labels to uint8, which corrupts the
    16-bit maps of PASCAL Context 459 and ADE20K-847 (ignore index 65535).
    This transform keeps the stored bit depth, applies the dataset's
    ``reduce_zero_label`` and ``label_map`` like mmseg does, and refuses a
    value that is neither a class id (< ``num_classes``) nor the ignore
    index, naming the file, the value and the likely cause. For 8-bit maps
    the output equals mmseg's (uint8).

    After ``LoadImageFromFile`` it also refuses a label map whose size
    differs from its image's (``ori_shape``), naming both files and sizes;
    an EXIF-rotated photo (which ``LoadImageFromFile`` turns upright while
    the label is read as stored) is recognised and the fix given. Where the
    rotation keeps the size (180 degrees, mirrors, square images), sizes
    cannot tell, so a warning names the file (datasets of ``mmseg_ovss`` set
    ``applies_exif_orientation`` from their pipeline).

    Required keys: ``seg_map_path``, ``reduce_zero_label``, ``seg_fields``;
    ``num_classes`` and ``ignore_index`` come from the dataset (the datasets
    of ``mmseg_ovss`` add them) unless given here.
    Added keys: ``gt_seg_map`` (uint8, or uint16 when ids exceed 255).

    Args:
        num_classes (int, optional): number of classes; overrides the
            dataset's.
        ignore_index (int, optional): ignore index; overrides the dataset's
            (default 255 when neither gives one).
        check_range (bool): raise on out-of-range values. Default True.
        backend_args (dict, optional): mmengine file backend arguments.
    """

    def __init__(self,
                 num_classes: Optional[int] = None,
                 ignore_index: Optional[int] = None,
                 check_range: bool = True,
                 backend_args: Optional[dict] = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.check_range = check_range
        self.backend_args = backend_args

    def transform(self, results: dict) -> dict:
        path = results['seg_map_path']
        ignore_index = self.ignore_index
        if ignore_index is None:
            ignore_index = results.get('ignore_index', 255)
        num_classes = self.num_classes or results.get('num_classes')
        reduce = bool(results.get('reduce_zero_label', False))

        label = read_label_map(path, self.backend_args).astype(np.int64)
        self._check_size(results, label.shape, path)
        if reduce:
            label = reduce_zero_label(label, ignore_index)
        if results.get('label_map'):
            label_map = dict(results['label_map'])
            if ignore_index != 255 and (num_classes or 256) <= 255:
                # mmseg's get_label_map marks dropped classes with 255 (the
                # datasets of mmseg_ovss map them to their ignore index
                # themselves, also where 255 is a class id)
                label_map = {old: ignore_index if new == 255 else new
                             for old, new in label_map.items()}
            label = apply_label_map(label, label_map)
        if self.check_range and num_classes is not None:
            self._check_range(label, path, num_classes, ignore_index, reduce)
        dtype = smallest_label_dtype(num_classes or 256, ignore_index)
        if dtype == np.uint8 and label.max(initial=0) > 255:
            dtype = np.uint16
        results['gt_seg_map'] = label.astype(dtype)
        results.setdefault('seg_fields', []).append('gt_seg_map')
        return results

    @staticmethod
    def _check_size(results: dict, seg_shape, seg_path: str) -> None:
        img_shape = results.get('ori_shape')
        if img_shape is None:  # loaded before the image
            return
        img_path = results.get('img_path', '<image>')
        if tuple(img_shape[:2]) != tuple(seg_shape):
            raise OVSSDataError(describe_size_mismatch(
                img_path, img_shape, seg_path, seg_shape))
        if not results.get('applies_exif_orientation', False):
            return
        orientation = exif_orientation(img_path)
        size_kept = orientation is not None and (
            orientation not in SWAPPING_ORIENTATIONS
            or img_shape[0] == img_shape[1])
        if size_kept and img_path not in _WARNED_ORIENTATION:
            _WARNED_ORIENTATION.add(img_path)
            warnings.warn(
                f'image {img_path} carries the EXIF tag Orientation='
                f'{orientation} ({EXIF_ORIENTATIONS[orientation]}) and '
                'LoadImageFromFile turns it upright, while its annotation '
                f'{seg_path} is read as stored; their sizes agree, so check '
                'that the label was drawn on the upright image, or load '
                "images with color_type='color_ignore_orientation'",
                stacklevel=2)

    @staticmethod
    def _check_range(label, path, num_classes, ignore_index, reduce) -> None:
        bad = (label >= num_classes) & (label != ignore_index)
        if not bad.any():
            return
        values = np.unique(label[bad])
        shown = ', '.join(str(v) for v in values[:5])
        if reduce:
            cause = ('reduce_zero_label=True is set: the file should hold ids '
                     f'1..{num_classes} with 0 for "unlabelled"')
        elif values.max() == num_classes:
            cause = ('the ids look 1-based: this variant needs '
                     'reduce_zero_label=True')
        else:
            cause = ('the annotation variant does not match the dataset '
                     '(e.g. raw ids instead of train ids, a 16-bit map of a '
                     'larger vocabulary, or ignore index '
                     f'{ignore_index} while the file marks unlabelled pixels '
                     'with another value)')
        raise OVSSDataError(
            f'annotation file {path} holds label value(s) {shown} that are '
            f'neither a class id (0..{num_classes - 1}) nor the ignore index '
            f'{ignore_index}. Likely cause: {cause}. Regenerate the labels '
            'with tools/dataset_converters/ or fix the dataset config '
            '(see docs/datasets.md).')

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_classes={self.num_classes}, '
                f'ignore_index={self.ignore_index}, '
                f'check_range={self.check_range})')
