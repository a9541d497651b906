"""Self-affinity from CLIP attention (FreeCP Eq. 2) and its transition matrix.

Eq. 2 averages the patch-to-patch attention of several layers. The authors'
code (``chenqi1126/FreeCP`` freecp_segmentor.py ``refinement``; the CLIP-ES
recipe, ``linyq2117/CLIP-ES``) then turns the average into a
transition matrix: alternate column/row normalisation (3 rounds),
symmetrise, and raise to a power (square once).
"""
from typing import Dict, Optional, Sequence, Union

import torch
from torch import Tensor

from mmseg_ovss.utils.errors import OVSSConfigError


def attention_affinity(attn_weights: Dict[int, Tensor],
                       layers: Sequence[int],
                       head: Optional[int] = None,
                       captured: Union[None, str, int] = None) -> Tensor:
    """Eq. 2: mean of the chosen layers' patch-to-patch attention.

    Args:
        attn_weights: layer index -> (B, heads, 1 + N, 1 + N) attention
            probabilities (``DenseCLIPFeatures.attn_weights``).
        layers: layer indices to average.
        head: average all heads when None; else use this head only (the
            authors' code does this with GEM, a quirk).
        captured: ``DenseCLIPFeatures.attn_heads``: None when every head
            was kept; ``'mean'`` or a head index when the backbone already
            reduced the heads to one map (B, 1, 1 + N, 1 + N).
    Returns:
        (B, N, N) affinity without the CLS row and column.
    """
    missing = [layer for layer in layers if layer not in attn_weights]
    if missing:
        raise KeyError(
            f'attention of layers {missing} was not captured; request them '
            f'from the backbone (captured: {sorted(attn_weights)}).')
    if captured is not None and captured != ('mean' if head is None
                                             else head):
        wanted = 'the head mean' if head is None else f'head {head}'
        raise OVSSConfigError(
            f'the affinity needs {wanted} but the backbone captured '
            f'attention_heads={captured!r}; set the head\'s '
            'attention_heads to match affinity_head')
    total = None
    for layer in layers:
        attn = attn_weights[layer].float()
        if captured is not None:
            attn = attn[:, 0]
        else:
            attn = attn.mean(dim=1) if head is None else attn[:, head]
        total = attn if total is None else total + attn
    return (total / len(layers))[:, 1:, 1:]


def transition_matrix(affinity: Tensor,
                      normalize_rounds: int = 3,
                      symmetrize: bool = True,
                      power: int = 2,
                      eps: float = 1e-12) -> Tensor:
    """CLIP-ES transition matrix from a (B, N, N) affinity.

    Each round divides by column sums then by row sums; ``symmetrize``
    averages with the transpose; the result is raised to ``power`` by
    repeated matrix multiplication. ``normalize_rounds=0, symmetrize=False,
    power=1`` returns the affinity unchanged (the paper's Eq. 3).
    """
    trans = affinity.float()
    for _ in range(normalize_rounds):
        trans = trans / (trans.sum(dim=-2, keepdim=True) + eps)
        trans = trans / (trans.sum(dim=-1, keepdim=True) + eps)
    if symmetrize:
        trans = (trans + trans.transpose(-2, -1)) / 2
    result = trans
    for _ in range(power - 1):
        result = torch.bmm(result, trans)
    return result
