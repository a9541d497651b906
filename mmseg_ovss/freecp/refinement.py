"""Box-masked affinity refinement of activation maps (FreeCP Eq. 3)."""
from typing import Optional

import torch
from torch import Tensor

from mmseg_ovss.utils.boxes import box_union_masks, score_map_boxes
from .cam import minmax_normalize


def class_box_masks(cams: Tensor, threshold: float = 0.4,
                    clip_last: bool = True) -> Tensor:
    """Union of the boxes of each thresholded map: (B, K, h, w) -> bool.

    Eq. 3 as the authors' code (``chenqi1126/FreeCP`` ``refinement``):
    threshold at ``threshold`` x the map's max and take the bounding
    rectangle of every contour (CLIP-ES). One batched call.
    """
    b, k, h, w = cams.shape
    boxes, index = score_map_boxes(
        cams.reshape(b * k, h, w), threshold, include_holes=False,
        clip_last=clip_last)
    return box_union_masks(boxes, index, b * k, (h, w)).view(b, k, h, w)


def refine_activations(cams: Tensor,
                       transition: Tensor,
                       box_masks: Optional[Tensor] = None,
                       normalize: bool = True) -> Tensor:
    """Eq. 3: propagate each class map through the affinity.

    ``refined_c = T (mask_c * M_c)``, which equals the authors'
    ``(T * mask_c[None, :]) @ M_c`` without building a (K, N, N) tensor.
    Without ``box_masks`` this is the paper's plain ``M_c x SA``.

    Args:
        cams: (B, K, h, w) activation maps.
        transition: (B, N, N) transition matrix, N = h * w.
        box_masks: optional (B, K, h, w) bool masks.
        normalize: per-class min-max normalisation of the result.
    Returns:
        (B, K, h, w) refined maps.
    """
    b, k, h, w = cams.shape
    source = cams.float()
    if box_masks is not None:
        source = source * box_masks
    refined = torch.bmm(source.reshape(b, k, h * w),
                        transition.transpose(1, 2)).view(b, k, h, w)
    return minmax_normalize(refined, per_channel=True) if normalize \
        else refined
