"""Labels of selected-class scores without the full-vocabulary fill.

A head that scores only the classes each image selected (DCP-CLIP's
dynamic category selection, Eqs. 1-5) gives every unselected class the
same score map. The argmax over all C classes of the filled scores (mmseg's
``EncoderDecoder.postprocess_result``: crop, flip, bilinear resize to
``ori_shape``, ``argmax(dim=0)``) is then decided by the selected classes
and ONE channel holding the unselected classes' map, resized with them: the
same per-channel resize gives that channel exactly the values each
unselected class would get. Ties keep argmax's rule, the first maximum
index: among the selected classes the lowest vocabulary index, and against
the unselected map the lowest of that index and the lowest unselected one.
"""
from typing import Optional

import torch
from torch import Tensor


def lowest_unselected(mask: Tensor) -> Tensor:
    """(B,) the lowest class index an image did not select, -1 if it
    selected every class, of a (B, C) bool selection mask."""
    unselected = ~mask
    first = unselected.to(torch.uint8).argmax(dim=1)
    return torch.where(unselected.any(dim=1), first,
                       torch.full_like(first, -1))


def compact_argmax(scores: Tensor, index: Tensor, valid: Tensor,
                   mask: Tensor, fill: Optional[Tensor]) -> Tensor:
    """Labels of ``scatter_classes(scores, ...)`` filled with ``fill``,
    argmax over all classes, computed on the selected classes only.

    Scores are finite (sigmoid scores; NaN is not handled).

    Args:
        scores: (B, K, H, W) scores of each image's slots.
        index: (B, K) vocabulary index of each slot, the valid slots in
            increasing order (``CategorySelection.index``).
        valid: (B, K) bool, False at padding slots.
        mask: (B, C) bool, the selected classes.
        fill: (B, 1, H, W) score map of every unselected class (None: no
            class is unselected).

    Returns:
        (B, H, W) long vocabulary labels.
    """
    masked = scores.masked_fill(~valid[:, :, None, None], float('-inf'))
    best = masked.amax(dim=1)
    # max's index of equal maxima is not documented: take the first slot
    first = (masked == best.unsqueeze(1)).to(torch.uint8).argmax(dim=1)
    slot = first
    labels = index.gather(1, slot.flatten(1)).view_as(slot)
    if fill is None:
        return labels
    fill = fill[:, 0]
    other = lowest_unselected(mask)[:, None, None].expand_as(labels)
    has_other = other >= 0
    beaten = has_other & (fill > best)
    tied = has_other & (fill == best) & (other < labels)
    return torch.where(beaten | tied, other, labels)
