"""Zero-shot metric: pAcc, mIoU, mIoU(seen), mIoU(unseen) and hIoU."""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.logging import MMLogger, print_log
from prettytable import PrettyTable

from mmseg.registry import METRICS

from mmseg_ovss.datasets.zero_shot import load_zero_shot_split
from mmseg_ovss.evaluation.iou_metric import OVSSIoUMetric
from mmseg_ovss.utils.errors import OVSSConfigError


def zero_shot_scores(intersect: torch.Tensor, union: torch.Tensor,
                     label_area: torch.Tensor,
                     unseen_ids: Sequence[int]) -> Dict[str, float]:
    """Scores in [0, 1] from per-class pixel totals (CLIP-RC / ZegCLIP).

    IoU_c = I_c / U_c; classes with U_c = 0 (absent from ground truth and
    prediction) are left out of the means. mIoU(S) and mIoU(U) average the
    seen and unseen classes, hIoU = 2 S U / (S + U), pAcc = sum I / sum GT.
    """
    iou = (intersect / union).numpy()
    unseen = np.zeros(len(iou), dtype=bool)
    unseen[list(unseen_ids)] = True
    seen_iou = _nanmean(iou[~unseen])
    unseen_iou = _nanmean(iou[unseen])
    if np.isnan(seen_iou + unseen_iou):
        harmonic = float('nan')
    elif seen_iou + unseen_iou == 0:
        harmonic = 0.0
    else:
        harmonic = 2 * seen_iou * unseen_iou / (seen_iou + unseen_iou)
    return OrderedDict(
        pAcc=float(intersect.sum() / label_area.sum()),
        mIoU=_nanmean(iou),
        mIoU_seen=seen_iou,
        mIoU_unseen=unseen_iou,
        hIoU=harmonic)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float('nan')


@METRICS.register_module()
class ZeroShotIoUMetric(OVSSIoUMetric):
    """mmseg's IoU metric with the zero-shot summary of seen/unseen classes.

    Reports (percent, 2 decimals) ``pAcc``, ``mIoU``, ``mIoU_seen``,
    ``mIoU_unseen`` and ``hIoU`` = 2 S U / (S + U), plus mmseg's ``aAcc`` and
    ``mAcc``, and logs the per-class table with each class's split.

    Args:
        split (str, optional): a ``data/splits/*.json`` file (e.g.
            ``'data/splits/voc_15_5.json'``).
        unseen_ids (list[int], optional): explicit unseen class ids, instead
            of ``split``.
        **kwargs: the arguments of mmseg's ``IoUMetric`` (``ignore_index``,
            ``output_dir``, ...).
    """

    def __init__(self,
                 split: Optional[str] = None,
                 unseen_ids: Optional[List[int]] = None,
                 **kwargs) -> None:
        kwargs.setdefault('iou_metrics', ['mIoU'])
        super().__init__(**kwargs)
        if (split is None) == (unseen_ids is None):
            raise OVSSConfigError(
                'ZeroShotIoUMetric needs exactly one of split= (e.g. '
                "'data/splits/voc_15_5.json') or unseen_ids=[...]")
        self.split = (load_zero_shot_split(split)
                      if split is not None else None)
        ids = self.split.unseen_ids if self.split else unseen_ids
        self.unseen_ids = [int(i) for i in ids]
        if not self.unseen_ids:
            raise OVSSConfigError('ZeroShotIoUMetric: the unseen class list '
                                  'is empty; give at least one unseen id')

    def _check_against_dataset(self, class_names: Sequence[str]) -> None:
        num_classes = len(class_names)
        out_of_range = [i for i in self.unseen_ids if not 0 <= i < num_classes]
        if out_of_range:
            raise OVSSConfigError(
                f'ZeroShotIoUMetric: unseen ids {out_of_range} do not exist '
                f'in a dataset of {num_classes} classes; use the split file '
                'of this dataset')
        if self.split is not None:
            self.split.check_classes(class_names)

    def compute_metrics(self, results: list) -> Dict[str, float]:
        class_names = self.dataset_meta['classes']
        self._check_against_dataset(class_names)
        if self.format_only:
            return super().compute_metrics(results)
        intersect, union, pred_area, label_area = (
            sum(column) for column in zip(*results))
        scores = zero_shot_scores(intersect, union, label_area,
                                  self.unseen_ids)
        standard = self.total_area_to_metrics(
            intersect, union, pred_area, label_area, ['mIoU'],
            self.nan_to_num, self.beta)

        metrics = OrderedDict(
            (key, round(value * 100, 2)) for key, value in scores.items())
        metrics['aAcc'] = round(float(standard['aAcc']) * 100, 2)
        metrics['mAcc'] = round(float(np.nanmean(standard['Acc'])) * 100, 2)
        self._log_table(class_names, standard['IoU'], standard['Acc'])
        return metrics

    def _log_table(self, class_names, iou, acc) -> None:
        unseen = set(self.unseen_ids)
        table = PrettyTable()
        table.add_column('Class', list(class_names))
        table.add_column('Split', ['unseen' if i in unseen else 'seen'
                                   for i in range(len(class_names))])
        table.add_column('IoU', np.round(iou * 100, 2).tolist())
        table.add_column('Acc', np.round(acc * 100, 2).tolist())
        logger: MMLogger = MMLogger.get_current_instance()
        print_log('per class results:', logger)
        print_log('\n' + table.get_string(), logger=logger)
