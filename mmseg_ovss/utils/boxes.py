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
``contour_boxes`` is the direct cv2 reference, kept for tests.

Boxes are ``(x0, y0, x1, y1)`` with exclusive ends. With ``clip_last=True``
(the authors' code) ``x1``/``y1`` are clipped to ``width - 1``/``height - 1``
as CLIP-ES does, so a box touching the right/bottom border loses its last
column/row and a one-pixel box on that border is degenerate.
"""
from typing import Tuple

import cv2
import numpy as np
import torch
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


def _component_boxes(labels: np.ndarray, num: int) -> Tuple[Tensor, Tensor]:
    """Bounding boxes (x0, y0, x1, y1 exclusive) and map index per label."""
    flat = torch.from_numpy(labels.reshape(-1))
    pos = torch.nonzero(flat, as_tuple=True)[0]
    lab = flat[pos].long() - 1
    _, h, w = labels.shape
    map_idx, rem = pos // (h * w), pos % (h * w)
    ys, xs = rem // w, rem % w

    def reduce(values: Tensor, how: str, init: int) -> Tensor:
        out = torch.full((num, ), init, dtype=torch.long)
        return out.scatter_reduce(0, lab, values, how, include_self=False)

    boxes = torch.stack([
        reduce(xs, 'amin', w),
        reduce(ys, 'amin', h),
        reduce(xs, 'amax', -1) + 1,
        reduce(ys, 'amax', -1) + 1
    ], dim=1)
    return boxes, reduce(map_idx, 'amin', 0)


def score_map_boxes(score_maps: Tensor,
                    threshold: float = 0.4,
                    quantize: bool = True,
                    include_holes: bool = True,
                    clip_last: bool = True) -> Tuple[Tensor, Tensor]:
    """Boxes of every contour of every thresholded map, in one batch.

    Args:
        score_maps: (M, h, w) maps.
        threshold: relative threshold (0.4 in CLIP-ES / FreeCP).
        quantize: emulate the uint8 quantisation of the reference.
        include_holes: also return hole-contour boxes (``RETR_TREE``); they
            lie inside their component's box, so they only matter when
            each box is used on its own (FreeCP's crops), not for masks.
        clip_last: clip ``x1, y1`` to ``w - 1, h - 1`` as the reference.

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
    device = score_maps.device
    num_maps, h, w = score_maps.shape
    fg = binarize_score_maps(score_maps, threshold, quantize).cpu().numpy()
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
    if clip_last:
        boxes[:, 2].clamp_(max=w - 1)
        boxes[:, 3].clamp_(max=h - 1)
    order = torch.argsort(index, stable=True)
    return boxes[order].to(device), index[order].to(device)


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
