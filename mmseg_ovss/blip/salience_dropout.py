"""Salience DropOut (PnP-OVSS §3.2, Eqs. 2-3) and the authors' later schedule.

Both schedules call ``compute_maps(keep)`` repeatedly: ``keep`` is a (B, P)
bool mask of the patches still shown to the model (the others are blanked in
the image) and the result is (B, K, P) class salience maps. Dropped patches
always receive salience 0.

- ``median`` (the paper): after pass t, U = sum_k M~(k, t); drop the half of
  the remaining patches with the highest U (Eq. 3: U >= median; by rank,
  ceil(n / 2) of the n remaining, so that ties at the median cannot drop
  every patch); final map = sum over the passes.
- ``top_k`` (the authors' released code): after each pass drop the k (10)
  remaining patches of highest U; final map = sum over the passes plus the
  first pass once more (their code starts the sum from the first map).
"""
from typing import Callable, List, Tuple

import torch
from torch import Tensor

from mmseg_ovss.utils.errors import OVSSConfigError

SCHEDULES = ('median', 'top_k')


def median_drop(salience: Tensor, keep: Tensor) -> Tensor:
    """Eqs. 2-3: remove the half of the kept patches with the highest U.

    The paper zeroes out "the 50% of image patches with the highest values"
    (U >= median). Dropping by rank removes exactly ceil(n / 2) of the n kept
    patches of each image, which equals the median rule when the values are
    distinct; with ties (GradCAM clamps negatives, so many patches have U = 0)
    the median rule could drop every remaining patch. Ties are broken by
    patch index (the earlier patch goes first).

    Args:
        salience: (B, P) class-agnostic salience U.
        keep: (B, P) bool, the remaining set S(t-1).
    Returns:
        (B, P) bool, S(t).
    """
    masked = salience.float().masked_fill(~keep, float('-inf'))
    order = masked.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(keep.shape[1], device=keep.device)
    rank = torch.empty_like(order).scatter_(1, order,
                                            positions.expand_as(order))
    count = keep.sum(1, keepdim=True)
    drop = keep & (rank < (count + 1) // 2)
    return keep & ~drop


def top_k_drop(salience: Tensor, keep: Tensor, k: int) -> Tensor:
    """Remove the ``k`` kept patches of highest salience."""
    masked = salience.float().masked_fill(~keep, float('-inf'))
    k = min(k, masked.shape[1])
    idx = masked.topk(k, dim=1).indices
    drop = torch.zeros_like(keep).scatter_(1, idx, True) & keep
    return keep & ~drop


def salience_dropout(compute_maps: Callable[[Tensor], Tensor],
                     keep: Tensor, schedule: str = 'median',
                     iterations: int = 4, top_k: int = 10
                     ) -> Tuple[Tensor, List[Tensor]]:
    """Run Salience DropOut.

    Args:
        compute_maps: keep mask (B, P) -> class maps (B, K, P).
        keep: (B, P) bool initial mask (all True: S(0) = every patch).
        schedule: ``'median'`` (paper) or ``'top_k'`` (authors' code).
        iterations: number of passes (the paper: 4; 1 = no dropout).
        top_k: patches dropped per pass by ``'top_k'``.
    Returns:
        The summed maps (B, K, P) and the keep mask used by each pass.
    """
    if schedule not in SCHEDULES:
        raise OVSSConfigError(
            f'unknown Salience DropOut schedule "{schedule}"; use one of '
            f'{SCHEDULES}.')
    if iterations < 1:
        raise OVSSConfigError('Salience DropOut needs iterations >= 1.')
    total, keeps = None, []
    for t in range(iterations):
        keeps.append(keep)
        maps = compute_maps(keep) * keep[:, None, :]
        if total is None:
            total = maps * 2 if schedule == 'top_k' else maps.clone()
        else:
            total = total + maps
        if t + 1 == iterations:
            break
        salience = maps.sum(1)
        if schedule == 'median':
            keep = median_drop(salience, keep)
        else:
            keep = top_k_drop(salience, keep, top_k)
    return total, keeps
