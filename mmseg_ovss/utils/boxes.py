"""Bounding boxes of thresholded score maps.

FreeCP (Eqs. 3 and 8; ``scoremap2bbox`` in ``chenqi1126/FreeCP``
freecp_segmentor.py) follows CLIP-ES (``linyq2117/CLIP-ES``): a score map is
quantised
to ``uint8``, thresholded at ``threshold`` x its maximum, and the bounding
rectangle of every contour that ``cv2.findContours(..., RETR_TREE)`` finds
(outer borders and hole borders) becomes a box.

``score_map_boxes`` computes the same boxes for a whole batch of maps at once
with two ``scipy.ndimage.label`` calls (one host transfer per batch instead of
one per map): an outer contour's rectangle is the bounding box of an
8-connected foreground component, a hole contour's rectangle is the bounding
box of a 4-connected enclosed background component grown by one pixel.
``contour_boxes`` is the direct cv2 reference, kept for tests. On an
accelerator the components are labelled with torch ops instead
(:func:`label_components`: min-label propagation), so the maps never travel
to the host; both labellings give the same boxes in the same order.

Boxes are ``(x0, y0, x1, y1)`` with exclusive ends. With ``clip_last=True``
(the authors' code) ``x1``/``y1`` are clipped to ``width - 1``/``height - 1``
as CLIP-ES does, so a box touching the right/bottom border loses its last
column/row and a one-pixel box on that border is degenerate.
"""
from typing import Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

# Label each (h, w) slice of a (M, h, w) stack on its own.
_CONNECT_8 = np.zeros((3, 3, 3), dtype=bool)
_CONNECT_8[1] = True
_CONNECT_4 = np.zeros((3, 3, 3), dtype=bool)
_CONNECT_4[1] = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


def binarize_score_maps(score_maps: Tensor,
                        threshold: float = 0.4,
                        quantize: bool = True) -> Tensor:
    """Foreground of each map: pixels above ``threshold`` x the map's max.

    With ``quantize`` the maps (expected in [0, 1]) are first cast to uint8
    levels like ``(map * 255).astype(np.uint8)`` and compared with
    ``int(threshold * max_level)`` as ``cv2.threshold(THRESH_BINARY)`` does.

    Args:
        score_maps: (..., h, w) float maps.
    Returns:
        (..., h, w) bool tensor.
    """
    maps = score_maps.float()
    if quantize:
        maps = (maps * 255).clamp(0, 255).floor()
        peak = maps.amax(dim=(-2, -1), keepdim=True)
        return maps > (threshold * peak).floor()
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return maps > threshold * peak


def _group_reduce(ids: Tensor, num: int, values: Tensor, how: str,
                  init: int) -> Tensor:
    """Per group reduction (``'amin'``/``'amax'``) of ``values`` over the
    groups ``ids`` in [0, num]; id ``num`` is a discarded spare slot."""
    out = torch.full((num + 1, ), init, dtype=torch.long, device=ids.device)
    return out.scatter_reduce(0, ids, values, how, include_self=False)[:num]


def _group_boxes(ids: Tensor, num: int, xs: Tensor, ys: Tensor, h: int,
                 w: int) -> Tensor:
    """(num, 4) boxes (x0, y0, x1, y1 exclusive) of the pixels (xs, ys)
    of each group."""
    return torch.stack([
        _group_reduce(ids, num, xs, 'amin', w),
        _group_reduce(ids, num, ys, 'amin', h),
        _group_reduce(ids, num, xs, 'amax', -1) + 1,
        _group_reduce(ids, num, ys, 'amax', -1) + 1
    ], dim=1)


def _component_boxes(labels: np.ndarray, num: int) -> Tuple[Tensor, Tensor]:
    """Bounding boxes (x0, y0, x1, y1 exclusive) and map index per label."""
    flat = torch.from_numpy(labels.reshape(-1))
    pos = torch.nonzero(flat, as_tuple=True)[0]
    lab = flat[pos].long() - 1
    _, h, w = labels.shape
    map_idx, rem = pos // (h * w), pos % (h * w)
    ys, xs = rem // w, rem % w

    return (_group_boxes(lab, num, xs, ys, h, w),
            _group_reduce(lab, num, map_idx, 'amin', 0))


LABELLINGS = ('auto', 'scipy', 'torch')


def label_components(mask: Tensor, connectivity: int = 8,
                     check_every: int = 8) -> Tensor:
    """Connected components of each (h, w) slice of a (M, h, w) bool mask
    with torch ops, on the mask's device.

    Each pixel of a component gets the lowest flat index (over the whole
    stack) of its component, found by propagating the minimum over the
    ``connectivity`` (4 or 8) neighbourhood until nothing changes (the
    check reads one flag every ``check_every`` rounds); background is -1.
    Ordering the components by label is ordering them by their first
    pixel in raster order, the order of ``scipy.ndimage.label``.
    """
    if connectivity not in (4, 8):
        raise ValueError(f'connectivity must be 4 or 8, got {connectivity}')
    num_maps, h, w = mask.shape
    big = num_maps * h * w
    index = torch.arange(big, device=mask.device).view(num_maps, h, w)
    labels = torch.where(mask, index, torch.full_like(index, big))
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
               if (dy or dx) and (connectivity == 8 or not (dy and dx))]
    while True:
        previous = labels
        for _ in range(check_every):
            padded = F.pad(labels, (1, 1, 1, 1), value=big)
            best = labels
            for dy, dx in offsets:
                best = torch.minimum(
                    best, padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w])
            # pointer jumping: adopt the label of the label's own pixel
            best = torch.where(mask, best, labels)
            jumped = best.reshape(-1).clamp(max=big - 1)
            best = torch.minimum(
                best, torch.where(mask, best.reshape(-1)[jumped].view_as(best),
                                  best))
            labels = best
        if torch.equal(labels, previous):
            return torch.where(mask, labels, torch.full_like(labels, -1))


def _torch_component_boxes(labels: Tensor) -> Tuple[Tensor, Tensor]:
    """Boxes (x0, y0, x1, y1 exclusive) and map index of the components of
    :func:`label_components` output, ordered by label."""
    num_maps, h, w = labels.shape
    flat = labels.reshape(-1)
    roots = torch.nonzero(flat == torch.arange(flat.numel(),
                                               device=flat.device),
                          as_tuple=True)[0]
    num = roots.numel()
    compact = torch.full((flat.numel() + 1, ), num, dtype=torch.long,
                         device=flat.device)
    compact[roots] = torch.arange(num, device=flat.device)
    ids = compact[flat.clamp(min=-1)]  # background (-1) -> the spare slot
    pos = torch.arange(flat.numel(), device=flat.device)
    map_idx, rem = pos // (h * w), pos % (h * w)
    ys, xs = rem // w, rem % w

    return _group_boxes(ids, num, xs, ys, h, w), roots // (h * w)


def _torch_boxes(fg: Tensor, include_holes: bool) -> Tuple[Tensor, Tensor]:
    boxes, index = _torch_component_boxes(label_components(fg, 8))
    if not include_holes:
        return boxes, index
    bg_labels = label_components(~fg, 4)
    num_maps, h, w = fg.shape
    flat = bg_labels.reshape(-1)
    touches = torch.zeros(flat.numel() + 1, dtype=torch.bool,
                          device=fg.device)
    for edge in (bg_labels[:, 0], bg_labels[:, -1], bg_labels[:, :, 0],
                 bg_labels[:, :, -1]):
        touches[edge.reshape(-1)] = True  # -1 writes the spare slot
    hole = (bg_labels >= 0) & ~touches[flat].view_as(bg_labels)
    holes = torch.where(hole, bg_labels, torch.full_like(bg_labels, -1))
    hole_boxes, hole_index = _torch_component_boxes(holes)
    hole_boxes = hole_boxes + torch.tensor([-1, -1, 1, 1],
                                           device=fg.device)
    return torch.cat([boxes, hole_boxes]), torch.cat([index, hole_index])


def score_map_boxes(score_maps: Tensor,
                    threshold: float = 0.4,
                    quantize: bool = True,
                    include_holes: bool = True,
                    clip_last: bool = True,
                    labelling: str = 'auto') -> Tuple[Tensor, Tensor]:
    """Boxes of every contour of every thresholded map, in one batch.

    Args:
        score_maps: (M, h, w) maps.
        threshold: relative threshold (0.4 in CLIP-ES / FreeCP).
        quantize: emulate the uint8 quantisation of the reference.
        include_holes: also return hole-contour boxes (``RETR_TREE``); they
            lie inside their component's box, so they only matter when
            each box is used on its own (FreeCP's crops), not for masks.
        clip_last: clip ``x1, y1`` to ``w - 1, h - 1`` as the reference.
        labelling: ``'scipy'`` (``scipy.ndimage.label`` on the host),
            ``'torch'`` (:func:`label_components` on the maps' device) or
            ``'auto'`` (torch on accelerators, scipy on the CPU).

    Returns:
        boxes: (n, 4) long tensor ``(x0, y0, x1, y1)`` on the maps' device,
            sorted by map index.
        map_index: (n, ) long tensor, the map each box belongs to. A map
            without foreground has no box.
    """
    if score_maps.dim() != 3:
        raise ValueError(
            f'score_map_boxes expects (M, h, w) maps, got shape '
            f'{tuple(score_maps.shape)}; flatten leading dims first.')
    if labelling not in LABELLINGS:
        raise ValueError(f'labelling={labelling!r} is not one of '
                         f'{LABELLINGS}')
    device = score_maps.device
    num_maps, h, w = score_maps.shape
    fg = binarize_score_maps(score_maps, threshold, quantize)
    if labelling == 'torch' or (labelling == 'auto'
                                and device.type != 'cpu'):
        boxes, index = _torch_boxes(fg, include_holes)
        return _finish_boxes(boxes, index, h, w, clip_last)
    fg = fg.cpu().numpy()
    labels, num = ndimage.label(fg, structure=_CONNECT_8)
    boxes, index = _component_boxes(labels, num)
    if include_holes:
        bg_labels, bg_num = ndimage.label(~fg, structure=_CONNECT_4)
        border = np.concatenate([
            bg_labels[:, 0].ravel(), bg_labels[:, -1].ravel(),
            bg_labels[:, :, 0].ravel(), bg_labels[:, :, -1].ravel()
        ])
        is_hole = np.ones(bg_num + 1, dtype=bool)
        is_hole[border] = False
        is_hole[0] = False
        bg_labels = np.where(is_hole[bg_labels], bg_labels, 0)
        hole_boxes, hole_index = _component_boxes(bg_labels, bg_num)
        keep = torch.from_numpy(is_hole[1:])
        hole_boxes = hole_boxes[keep] + torch.tensor([-1, -1, 1, 1])
        boxes = torch.cat([boxes, hole_boxes])
        index = torch.cat([index, hole_index[keep]])
    boxes, index = _finish_boxes(boxes, index, h, w, clip_last)
    return boxes.to(device), index.to(device)


def _finish_boxes(boxes: Tensor, index: Tensor, h: int, w: int,
                  clip_last: bool) -> Tuple[Tensor, Tensor]:
    if clip_last:
        boxes[:, 2].clamp_(max=w - 1)
        boxes[:, 3].clamp_(max=h - 1)
    order = torch.argsort(index, stable=True)
    return boxes[order], index[order]


def box_union_masks(boxes: Tensor, map_index: Tensor, num_maps: int,
                    size: Tuple[int, int]) -> Tensor:
    """Union of each map's boxes as a (num_maps, h, w) bool mask."""
    h, w = size
    ys = torch.arange(h, device=boxes.device).view(1, h, 1)
    xs = torch.arange(w, device=boxes.device).view(1, 1, w)
    x0, y0, x1, y1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    masks = torch.zeros(num_maps, h * w, device=boxes.device)
    masks.index_add_(0, map_index, inside.flatten(1).float())
    return masks.view(num_maps, h, w) > 0


def contour_boxes(score_map: np.ndarray,
                  threshold: float = 0.4,
                  clip_last: bool = True) -> np.ndarray:
    """Reference: boxes of ``cv2.findContours(RETR_TREE)`` on one map.

    Returns an (n, 4) int array ``(x0, y0, x1, y1)``; (0, 4) when the map
    has no foreground (the authors return one empty box there instead).
    """
    height, width = score_map.shape
    levels = (np.asarray(score_map, dtype=np.float32) * 255).clip(
        0, 255).astype(np.uint8)
    _, binary = cv2.threshold(levels, int(threshold * levels.max()), 255,
                              cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE,
                                cv2.CHAIN_APPROX_SIMPLE)[-2]
    boxes = []
    for contour in contours:
        x, y, bw, bh = cv2.boundingRect(contour)
        x1, y1 = x + bw, y + bh
        if clip_last:
            x1, y1 = min(x1, width - 1), min(y1, height - 1)
        boxes.append([x, y, x1, y1])
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
