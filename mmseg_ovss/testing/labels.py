"""Label comparisons that allow for fp32 rounding.

Two runs of one formula that round differently (another kernel, batch
size, thread count or CPU) give scores that agree within a bound; their
argmax agrees wherever the best class leads the second by more than the
scores can move. Tests compare labels there only, and check that such
pixels are most of the image, so the comparison still tests something.
"""
from typing import Union

import numpy as np
from torch import Tensor


def decided_pixels(scores: Tensor, margin: Union[float, Tensor],
                   dim: int = 0) -> Tensor:
    """Bool mask (``scores`` without ``dim``) of the positions whose best
    score along the class axis ``dim`` exceeds the second best by more
    than ``margin``: there a move of each score by less than
    ``margin / 2`` cannot change the argmax."""
    if scores.shape[dim] < 2:
        raise ValueError(
            f'decided_pixels needs at least 2 classes along dim {dim}, got '
            f'scores of shape {tuple(scores.shape)}')
    best, second = scores.topk(2, dim=dim).values.unbind(dim)
    return (best - second) > margin


def assert_equal_where_decided(actual, expected, decided,
                               min_fraction: float) -> None:
    """``actual == expected`` at every ``decided`` position (torch or
    numpy arrays of one shape), and at least ``min_fraction`` of the
    positions decided."""
    actual, expected, decided = (
        value.detach().cpu().numpy() if isinstance(value, Tensor)
        else np.asarray(value) for value in (actual, expected, decided))
    fraction = float(decided.mean())
    assert fraction > min_fraction, (
        f'only {fraction:.1%} of the pixels are decided beyond rounding '
        f'(need > {min_fraction:.0%}): the comparison would test too little')
    np.testing.assert_array_equal(actual[decided], expected[decided])


__all__ = ['decided_pixels', 'assert_equal_where_decided']
