"""The official GEM code's scoring: per-class min-max, background rule.

``WalBouss/GEM`` (``gem/gem_wrapper.py``, ``GEMWrapper.forward`` and
``min_max``) upsamples each prompt's patch-text cosine map bilinearly to the
image and normalises it over the whole image,
m'_c = (m_c - min m_c) / (max m_c - min m_c); the prediction is
argmax_c m'_c. Its README ("Semantic Segmentation" example) adds a background
rule: p = softmax over the foreground classes of m', background where
max_c p_c < threshold.
"""
import math
from typing import Optional

import torch
from mmseg.registry import MODELS
from torch import Tensor

from mmseg_ovss.clip.features import VocabularyEmbeddings
from mmseg_ovss.utils.errors import OVSSConfigError

from .cosine_head import CosineSimilarityHead, synonym_max


def min_max_per_map(maps: Tensor) -> Tensor:
    """(m - min m) / (max m - min m) over H, W of every (image, channel).

    A constant map has no range: it becomes 0 there (the official code
    divides by zero and returns NaN).
    """
    flat = maps.flatten(2)
    low = flat.amin(dim=-1)[..., None, None]
    span = flat.amax(dim=-1)[..., None, None] - low
    return (maps - low) / span.masked_fill(span == 0, 1)


def reachable_top_probability(num_foreground: int, scale: float):
    """Range of max_c softmax_c(scale * m'_c) for m' in [0, 1]^K: from 1/K
    (all equal) to 1 / (1 + (K - 1) e^-scale) (one at 1, the others 0)."""
    return (1.0 / num_foreground,
            1.0 / (1.0 + (num_foreground - 1) * math.exp(-scale)))


@MODELS.register_module()
class GEMHead(CosineSimilarityHead):
    """Cosine maps scored as the official GEM code does.

    Window maps are the cosines cos(f_p, t_q) of the cosine head. After
    stitching and resizing to the output size, each query map is min-max
    normalised over the image and a class takes the max over its synonyms
    (the official code has one prompt per class). ``logit_scale`` has no
    effect (min-max removes any positive scale); it is accepted so that
    configs inheriting ``clip_gem.py`` can switch heads.

    The official code min-maxes at the network's input size; here the maps
    are at the output (original image) size, the size at which
    ``class_scores`` receives them.

    Args:
        background_threshold (float, optional): the README's background
            rule. None: the background class, if the vocabulary has one, is
            scored like any other class (its words are queries). A float:
            the background class's queries are ignored, foreground scores
            become p = softmax(background_logit_scale * m') over the
            foreground classes and the background wins where max p is below
            the threshold (its score is then the threshold, else 0). It must
            lie in the reachable range of max p (see
            :func:`reachable_top_probability`), else every pixel or none
            would become background and a clear error is raised.
        background_logit_scale (float): scale of that softmax (1 in the
            README).
    """
    # scores of a pixel depend on the whole image (min and max)
    pixelwise_scores = False

    def __init__(self, logit_scale: float = 40.0,
                 background_threshold: Optional[float] = None,
                 background_logit_scale: float = 1.0, init_cfg=None):
        super().__init__(logit_scale=logit_scale, init_cfg=init_cfg)
        if background_threshold is not None and not (
                0.0 < float(background_threshold) < 1.0):
            raise OVSSConfigError(
                f'GEMHead background_threshold must be in (0, 1) or None, '
                f'got {background_threshold}')
        if not float(background_logit_scale) > 0:
            raise OVSSConfigError(
                f'GEMHead background_logit_scale must be > 0, got '
                f'{background_logit_scale}')
        self.background_threshold = (None if background_threshold is None
                                     else float(background_threshold))
        self.background_logit_scale = float(background_logit_scale)

    def class_scores(self, maps: Tensor,
                     vocab: VocabularyEmbeddings) -> Tensor:
        scores = min_max_per_map(maps.float())
        if scores.shape[1] != vocab.num_classes:
            scores = synonym_max(scores, vocab.query_to_class,
                                 vocab.num_classes)
        if self.background_threshold is None:
            return scores
        return self.threshold_background(scores, vocab)

    def threshold_background(self, scores: Tensor,
                             vocab: VocabularyEmbeddings) -> Tensor:
        """The README's rule on per-class min-max scores (N, K, H, W)."""
        background = vocab.background_class
        if background is None:
            raise OVSSConfigError(
                'GEMHead background_threshold needs a vocabulary with a '
                'background class (VOC21, PC60, COCO-Object); this one has '
                'none: set background_threshold=None')
        num_foreground = vocab.num_classes - 1
        if num_foreground < 1:
            raise OVSSConfigError(
                'GEMHead background_threshold needs at least one foreground '
                'class besides the background; the vocabulary has only '
                f'{vocab.class_names}')
        threshold = self.background_threshold
        low, high = reachable_top_probability(num_foreground,
                                              self.background_logit_scale)
        if not low < threshold <= high:
            raise OVSSConfigError(
                f'GEMHead background_threshold={threshold} is outside '
                f'({low:.4g}, {high:.4g}], the range of the top softmax '
                f'probability of {num_foreground} foreground classes at '
                f'background_logit_scale={self.background_logit_scale}: '
                + ('every pixel would be background' if threshold > high
                   else 'no pixel would be background')
                + '; choose a threshold in that range or change '
                'background_logit_scale')
        foreground = torch.cat([scores[:, :background],
                                scores[:, background + 1:]], dim=1)
        probs = (self.background_logit_scale * foreground).softmax(dim=1)
        top = probs.amax(dim=1, keepdim=True)
        back = torch.where(top < threshold, torch.full_like(top, threshold),
                           torch.zeros_like(top))
        return torch.cat([probs[:, :background], back,
                          probs[:, background:]], dim=1)
