"""Spatial consistency between activation maps (FreeCP Eq. 4).

Three variants (the paper's and those of ``chenqi1126/FreeCP``
freecp_segmentor.py):

- ``'iou'``: the paper's Eq. 4, ``sum(XY) / sum(X + Y - XY)``.
- ``'half_dice'``: the authors' redundancy score, ``sum(XY) / (sum X +
  sum Y)`` (half a Dice coefficient, at most 0.5).
- ``'soft_iou'``: the authors' ambiguity score, ``sum(min) / sum(max)``.
"""
from typing import Optional

import torch
from torch import Tensor

SC_METRICS = ('iou', 'half_dice', 'soft_iou')
# elements of one |x - y| block of the soft-IoU pairs (64 MiB of float32)
PAIRWISE_CHUNK_ELEMENTS = 1 << 24


def _check(metric: str) -> None:
    if metric not in SC_METRICS:
        raise ValueError(f'unknown spatial-consistency metric {metric!r}; '
                         f'choose one of {SC_METRICS}.')


def spatial_consistency(x: Tensor, y: Tensor, metric: str = 'iou',
                        eps: float = 1e-8) -> Tensor:
    """Eq. 4 between matching maps; reduces the last two (spatial) dims."""
    _check(metric)
    if metric == 'soft_iou':
        inter = torch.minimum(x, y).sum(dim=(-2, -1))
        return inter / (torch.maximum(x, y).sum(dim=(-2, -1)) + eps)
    inter = (x * y).sum(dim=(-2, -1))
    if metric == 'half_dice':
        return inter / (x.sum(dim=(-2, -1)) + y.sum(dim=(-2, -1)) + eps)
    return inter / ((x + y - x * y).sum(dim=(-2, -1)) + eps)


def pairwise_consistency(maps: Tensor, metric: str = 'soft_iou',
                         chunk: Optional[int] = None,
                         eps: float = 1e-8) -> Tensor:
    """Eq. 6: consistency of every pair of maps, (B, K, h, w) -> (B, K, K).

    ``iou`` and ``half_dice`` use matrix products; ``soft_iou`` uses
    ``min(x, y) = (x + y - |x - y|) / 2`` over row chunks of ``chunk``
    classes (default: as many as keep the (B, chunk, K, h * w) difference
    under :data:`PAIRWISE_CHUNK_ELEMENTS`) to bound memory.
    """
    _check(metric)
    b, k = maps.shape[:2]
    flat = maps.reshape(b, k, -1).float()
    sums = flat.sum(dim=-1)
    pair_sum = sums[:, :, None] + sums[:, None, :]
    if metric in ('iou', 'half_dice'):
        inter = torch.bmm(flat, flat.transpose(1, 2))
        denom = pair_sum if metric == 'half_dice' else pair_sum - inter
        return inter / (denom + eps)
    if chunk is None:
        chunk = PAIRWISE_CHUNK_ELEMENTS // max(b * k * flat.shape[-1], 1)
    chunk = max(1, int(chunk))
    absdiff = torch.cat([
        (flat[:, start:start + chunk, None] - flat[:, None]).abs().sum(-1)
        for start in range(0, k, chunk)
    ], dim=1) if k else flat.new_zeros(b, 0, 0)
    inter = (pair_sum - absdiff) / 2
    union = (pair_sum + absdiff) / 2
    return inter / (union + eps)
