"""Transductive self-training: pseudo-labels for the unseen classes.

ZegCLIP+ST and CLIP-RC's transductive setting (CLIP-RC Sec. 4.2, Table 2):
the unseen class names are known in training but their pixels have no
label; each training step labels them with the model's own prediction,
the argmax over the unseen classes of the (detached) sigmoid scores at the
label resolution (``ZiqinZhou66/ZegCLIP``
``models/decode_heads/decode_seg.py`` ``forward_train``: seen classes set
to -1 before the argmax; the same in ``Jittor/JSeg`` ``cliprc_head.py``).
Their code has no confidence threshold; ``score_threshold`` adds one
(pixels whose best unseen score is below it stay ignored).

Which pixels: ZegCLIP's segmentor marks the pixels whose ground truth is an
unseen class (``_visiable_mask_st``: unseen ids -> -1, void stays 255), so
``pixels='unseen'`` (default) relabels the pixels labelled with an unseen
id, as this package's ``ZeroShotLabels(setting='transductive')`` leaves
them. ``pixels='ignored'`` relabels the pixels at the ignore index instead,
for label maps where unseen pixels were already set to ignore (void pixels
are then pseudo-labelled too).
"""
from typing import Optional, Sequence

import torch
from torch import Tensor

from mmseg_ovss.utils.errors import OVSSConfigError

PSEUDO_LABEL_PIXELS = ('unseen', 'ignored')


class UnseenPseudoLabeler:
    """Replace the labels of unseen (or ignored) pixels by pseudo-labels.

    Args:
        pixels (str): ``'unseen'`` or ``'ignored'``, see the module doc.
        score_threshold (float, optional): minimum sigmoid score of the
            chosen unseen class; None (ZegCLIP's code): no threshold.
    """

    def __init__(self, pixels: str = 'unseen',
                 score_threshold: Optional[float] = None):
        if pixels not in PSEUDO_LABEL_PIXELS:
            raise OVSSConfigError(
                f'self_training pixels={pixels!r}; use one of '
                f'{PSEUDO_LABEL_PIXELS}')
        if score_threshold is not None and \
                not 0.0 <= float(score_threshold) < 1.0:
            raise OVSSConfigError(
                f'self_training score_threshold={score_threshold!r} must be '
                'in [0, 1) (a sigmoid score) or None')
        self.pixels = pixels
        self.score_threshold = None if score_threshold is None \
            else float(score_threshold)

    @classmethod
    def build(cls, cfg) -> Optional['UnseenPseudoLabeler']:
        """From the head's ``self_training``: False/None (off), True
        (ZegCLIP's rule) or a dict of this class's arguments."""
        if cfg is None or cfg is False:
            return None
        if cfg is True:
            return cls()
        if isinstance(cfg, dict):
            return cls(**cfg)
        raise OVSSConfigError(
            f'self_training={cfg!r}: use False, True or a dict(pixels=..., '
            'score_threshold=...)')

    def __call__(self, logits: Tensor, labels: Tensor,
                 unseen_ids: Optional[Sequence[int]],
                 ignore_index: int) -> Tensor:
        """(B, C, H, W) logits, (B, H, W) labels -> labels with the chosen
        pixels set to the argmax over ``unseen_ids`` of the scores."""
        if not unseen_ids:
            raise OVSSConfigError(
                'self_training needs the unseen classes in the training '
                'vocabulary (transductive setting: ZeroShotLabels('
                "setting='transductive') and DatasetVocabularyHook); this "
                'stage has none')
        unseen = torch.as_tensor(tuple(unseen_ids), device=labels.device)
        with torch.no_grad():
            scores = logits.detach()[:, unseen].sigmoid()
            best, index = scores.max(dim=1)
            pseudo = unseen[index]
            if self.score_threshold is not None:
                pseudo = torch.where(best >= self.score_threshold, pseudo,
                                     torch.full_like(pseudo, ignore_index))
            if self.pixels == 'unseen':
                chosen = torch.isin(labels, unseen)
            else:
                chosen = labels == ignore_index
            return torch.where(chosen, pseudo.to(labels.dtype), labels)
