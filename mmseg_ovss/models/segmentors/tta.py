"""Test-time augmentation of the training-free CLIP segmentor.

mmseg's ``SegTTAModel`` averages the softmax of each view's ``seg_logits``
and takes the argmax. ``CLIPDenseSegmentor`` stores class scores instead
(probabilities, or FreeCP's maps with the 1 - max background), after its
area rule and before its probability rule, already at the original size
with the view's flip undone (``predict``). :class:`CLIPSegTTAModel`
averages those scores as they are and applies the segmentor's label rule.
``tools/test.py --tta`` picks it for CLIP segmentors.
"""
from typing import List, Optional

import torch
from mmengine.structures import PixelData
from mmseg.models.segmentors import SegTTAModel
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import SampleList
from torch import Tensor

from mmseg_ovss.models.segmentors.clip_segmentor import (CLIPDenseSegmentor,
                                                         flip_back,
                                                         flip_direction)
from mmseg_ovss.utils.errors import OVSSConfigError


@MODELS.register_module()
class CLIPSegTTAModel(SegTTAModel):
    """Mean of the views' class scores, then the segmentor's label rule.

    For each image, the views' full-size ``seg_logits`` (flips undone by
    ``CLIPDenseSegmentor.predict``) are averaged; the label is their argmax,
    with ``prob_thd`` sending pixels whose top mean score is below it to
    the background class (``threshold_labels``). ``area_thd`` is applied
    per view: each view's stored scores have the classes it dropped zeroed
    (SCLIP's rule, ``wangf3014/SCLIP`` clip_segmentor.py), and the mean is
    not filtered again. The views' scores are averaged before
    ``seg_logits.renormalize`` (NACLIP's stored renormalisation, applied to
    the stored mean only), so ``prob_thd`` compares the scores it compares
    without augmentation.

    The mean needs every view's full-size scores: a view whose
    ``seg_logits`` were subsampled or not stored (over
    ``model.seg_logits.max_mb``) is an error.

    Args:
        module (dict | CLIPDenseSegmentor): the segmentor.
        data_preprocessor (dict, optional): as mmengine's ``BaseTTAModel``.
    """

    def __init__(self, module, data_preprocessor: Optional[dict] = None):
        super().__init__(module=module, data_preprocessor=data_preprocessor)
        if not isinstance(self.module, CLIPDenseSegmentor):
            raise OVSSConfigError(
                f'CLIPSegTTAModel averages the class scores of a '
                f'CLIPDenseSegmentor, got {type(self.module).__name__}; use '
                "mmseg's SegTTAModel for other segmentors")

    def set_dataset_classes(self, classes) -> None:
        """``DatasetVocabularyHook`` reaches the segmentor through here."""
        self.module.set_dataset_classes(classes)

    def test_step(self, data):
        module = self.module
        renormalize = module.seg_logits_renormalize
        module.seg_logits_renormalize = False  # the views' raw scores
        try:
            return super().test_step(data)
        finally:
            module.seg_logits_renormalize = renormalize

    def merge_preds(self, data_samples_list: List[SampleList]) -> SampleList:
        """One merged ``SegDataSample`` per image from its views."""
        vocab = self.module.vocabulary()
        return [self._merge_views(views, vocab)
                for views in data_samples_list]

    def _full_scores(self, view: SegDataSample) -> Tensor:
        logits = view.get('seg_logits')
        stride = None if logits is None else logits.metainfo.get('stride', 1)
        if stride == 1:
            return logits.data
        stored = ('no seg_logits' if logits is None else
                  f'the scores of every {stride}-th pixel only')
        raise OVSSConfigError(
            "test-time augmentation averages the views' full-size "
            f'seg_logits, but a view of {view.metainfo.get("img_path")} '
            f'stored {stored}: model.seg_logits.max_mb='
            f'{self.module.seg_logits_max_mb} is too small for its scores. '
            'Raise model.seg_logits.max_mb (None: no limit), e.g. '
            '--cfg-options +model.seg_logits.max_mb=None')

    def _merge_views(self, views: SampleList, vocab) -> SegDataSample:
        total = None
        for view in views:
            scores = self._full_scores(view)
            total = scores.clone() if total is None else total.add_(scores)
        mean = total.div_(len(views))
        labels = self.module.threshold_labels(mean, vocab)[None]
        if self.module.seg_logits_renormalize:
            norm = mean.sum(0, keepdim=True)
            mean = mean / norm.clamp(min=torch.finfo(mean.dtype).tiny)
        # the unflipped view's metainfo and ground truth (any view's, with
        # its flip undone, when every view is flipped)
        reference = next((v for v in views if not v.metainfo.get('flip')),
                         views[0])
        meta = dict(reference.metainfo)
        direction = flip_direction(meta)
        meta.pop('flip', None)
        meta.pop('flip_direction', None)
        merged = SegDataSample(metainfo=meta)
        merged.set_data(dict(pred_sem_seg=PixelData(data=labels),
                             seg_logits=PixelData(data=mean)))
        if 'gt_sem_seg' in reference:
            truth = reference.gt_sem_seg.data
            merged.gt_sem_seg = PixelData(data=flip_back(truth, direction))
        return merged
