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

Compact scores (:func:`compact_scores_labels`, :func:`carry_classes`) are a
(B, 1 + K, H, W) tensor: channel 0 the map of every class without a channel
of its own, then one channel per slot of a
:class:`~mmseg_ovss.models.dcpclip.category_selection.CategorySelection`
(its valid slots are the classes of ``mask``, in increasing vocabulary
order). Giving a class its own channel, a copy of channel 0, changes
neither its scores nor the labels; tag validation (DCP-CLIP Eq. 17) does so
for the classes whose scores it swaps.
"""
from typing import TYPE_CHECKING, Optional, Tuple

import torch
from torch import Tensor

if TYPE_CHECKING:  # dcpclip's modules import this one
    from mmseg_ovss.models.dcpclip.category_selection import \
        CategorySelection


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


def compact_scores_labels(scores: Tensor,
                          selection: 'CategorySelection') -> Tensor:
    """(B, H, W) labels of the argmax over all C classes of (B, 1 + K, H,
    W) compact scores (the module doc)."""
    return compact_argmax(scores[:, 1:], selection.index, selection.valid,
                          selection.mask, scores[:, :1])


def class_channels(selection: 'CategorySelection') -> Tensor:
    """(B, C) long: the channel of each class in compact scores, 1 + its
    slot for the classes in ``selection.mask``, 0 (the shared map) for the
    others."""
    index, valid = selection.index, selection.valid
    slots = torch.arange(1, index.shape[1] + 1, device=index.device)
    slots = torch.where(valid, slots.expand_as(index),
                        torch.zeros_like(index))
    # padding slots hold distinct classes outside the mask: they get 0
    return torch.zeros_like(selection.mask, dtype=torch.long).scatter(
        1, index, slots)


def carry_classes(scores: Tensor, selection: 'CategorySelection',
                  classes: Tensor) -> Tuple[Tensor, 'CategorySelection']:
    """Give each class of a (B, C) bool ``classes`` mask its own channel in
    (B, 1 + K, H, W) compact scores: a copy of channel 0 for a class that
    had none (its scores are unchanged, so are the labels).

    Returns the (B, 1 + K', H, W) scores and their selection (``mask``:
    ``selection.mask | classes``, slots in increasing vocabulary order, so
    ties still resolve to the lowest index); the inputs when every class
    of ``classes`` already has a channel."""
    if classes.shape != selection.mask.shape:
        raise ValueError(
            f'carry_classes: a {tuple(classes.shape)} class mask for a '
            f'{tuple(selection.mask.shape)} selection; pass (B, C) bool')
    if not bool((classes & ~selection.mask).any()):
        return scores, selection
    carried = type(selection).from_mask(
        selection.mask | classes, image_logits=selection.image_logits,
        image_scores=selection.image_scores)
    source = class_channels(selection).gather(1, carried.index)
    source = torch.where(carried.valid, source, torch.zeros_like(source))
    source = torch.cat([torch.zeros_like(source[:, :1]), source], dim=1)
    return scores.gather(1, source[:, :, None, None].expand(
        -1, -1, *scores.shape[-2:])), carried
