"""Running a class-independent step on a few classes at a time.

The cost embedding, the spatial aggregation and the upsampling decoder of
CAT-Seg treat each class on its own (classes are folded into the batch);
only the class aggregation mixes them. At inference a large vocabulary
(ADE-847) can therefore go through those steps in chunks of classes, which
bounds their activation memory without changing a number.
"""
from typing import Callable, Optional

import torch
from torch import Tensor

from mmseg_ovss.utils.errors import OVSSConfigError


def check_chunk_size(value: Optional[int], what: str) -> Optional[int]:
    """None or a positive int."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OVSSConfigError(
            f'{what}={value!r} must be None (all classes at once) or a '
            'positive number of classes')
    return value


def map_class_chunks(fn: Callable[[Tensor], Tensor], x: Tensor,
                     chunk_size: Optional[int], dim: int = 1) -> Tensor:
    """``fn(x)``, computed on slices of ``chunk_size`` classes along
    ``dim`` and concatenated (the same numbers, less memory)."""
    if chunk_size is None or x.shape[dim] <= chunk_size:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(chunk_size, dim=dim)],
                     dim=dim)
