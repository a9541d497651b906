"""mmseg's IoU metric whose ``output_dir`` PNGs keep every class id.

mmseg's ``IoUMetric`` writes predictions (``tools/test.py --out``) as 8-bit
PNGs, so on PASCAL Context 459 and ADE20K-847 every id >= 256 wraps around
(id 300 is written as 44). ``OVSSIoUMetric`` writes the same files, in the
same place and the same id convention, but as 16-bit PNGs whenever a value
of the dataset can exceed 255 (see :func:`prediction_dtype`).
"""
import os.path as osp
from typing import Dict, Sequence

import cv2
import numpy as np
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS

from mmseg_ovss.utils.errors import OVSSDataError


def prediction_dtype(num_classes: int, ignore_index: int,
                     reduce_zero_label: bool):
    """PNG bit depth of the prediction files of a dataset.

    The written values are the class ids (shifted by +1 with
    ``reduce_zero_label``, the dataset's own file convention) and, for
    segmentors that leave pixels unlabelled, the ignore index (0 with
    ``reduce_zero_label``). uint8 when the largest of them fits in 8 bits, as
    mmseg writes; uint16 otherwise (PC-459, ADE-847: 459 / 847 classes and
    ignore 65535). One depth per dataset, so that every file of a run reads
    back the same way.
    """
    largest = num_classes - 1 + int(reduce_zero_label)
    if not reduce_zero_label:
        largest = max(largest, ignore_index)
    if largest > np.iinfo(np.uint16).max:
        raise OVSSDataError(
            f'predictions of {num_classes} classes with ignore index '
            f'{ignore_index} do not fit in a 16-bit PNG; use an ignore index '
            '<= 65535')
    return np.uint8 if largest <= 255 else np.uint16


def encode_prediction(labels: np.ndarray, ignore_index: int,
                      reduce_zero_label: bool, dtype) -> np.ndarray:
    """Label ids as written to disk: +1 with ``reduce_zero_label`` (the ignore
    index becomes 0, "unlabelled"), in ``dtype``. For 8-bit datasets this is
    exactly what mmseg's ``IoUMetric`` writes."""
    labels = labels.astype(np.int64)
    if reduce_zero_label:
        labels = np.where(labels == ignore_index, 0, labels + 1)
    return labels.astype(dtype)


@METRICS.register_module()
class OVSSIoUMetric(IoUMetric):
    """mmseg's ``IoUMetric``; ``output_dir`` PNGs are 16-bit when needed.

    Scores are mmseg's. With ``output_dir`` each image's prediction is
    written to ``<output_dir>/<image name>.png`` as mmseg does, 8-bit where
    every id fits and 16-bit otherwise (:func:`prediction_dtype`); read them
    back with ``cv2.imread(path, cv2.IMREAD_UNCHANGED)`` or Pillow. A file
    that cannot be written, or two images of the same name (which would
    overwrite each other's prediction), raise :class:`OVSSDataError`.

    Args:
        **kwargs: the arguments of mmseg's ``IoUMetric``.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._written: Dict[str, str] = {}

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        output_dir, self.output_dir = self.output_dir, None
        try:  # mmseg's scores, without its 8-bit writer
            super().process(data_batch, data_samples)
        finally:
            self.output_dir = output_dir
        if output_dir is None:
            return
        num_classes = len(self.dataset_meta['classes'])
        for sample in data_samples:
            reduce = bool(sample.get('reduce_zero_label', False))
            dtype = prediction_dtype(num_classes, self.ignore_index, reduce)
            labels = sample['pred_sem_seg']['data'].squeeze().cpu().numpy()
            self._write(sample['img_path'],
                        encode_prediction(labels, self.ignore_index, reduce,
                                          dtype))

    def _write(self, img_path: str, labels: np.ndarray) -> None:
        name = osp.splitext(osp.basename(img_path))[0]
        target = osp.abspath(osp.join(self.output_dir, f'{name}.png'))
        other = self._written.get(target)
        if other is not None and other != img_path:
            raise OVSSDataError(
                f'images {other} and {img_path} share the name "{name}", so '
                f'their predictions would both be written to {target}; '
                'evaluate such images in separate runs (or rename them)')
        try:
            written = cv2.imwrite(target, labels)
        except cv2.error:
            written = False
        if not written:
            raise OVSSDataError(
                f'cannot write the prediction {target}; check that '
                f'{self.output_dir} exists and is writable')
        self._written[target] = img_path
