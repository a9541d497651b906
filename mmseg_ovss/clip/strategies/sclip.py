"""SCLIP (Wang et al., ECCV 2024): correlative self-attention.

W = softmax(q q^T / sqrt(d)) + softmax(k k^T / sqrt(d)) (rows sum to 2).
Official (``wangf3014/SCLIP`` ``clip/model.py``,
``VisionTransformer.forward``): residual and FFN kept. FreeCP's variant: no
residual, FFN kept (``residual=False``; ``chenqi1126/FreeCP``
``open_clip/transformer.py``, ``forward_all``).
"""

from mmseg_ovss.clip.attention import (attention_values, scaled_similarity,
                                        softmax_)

from .base import DENSE_STRATEGIES, LastBlockStrategy


@DENSE_STRATEGIES.register_module(name=['SCLIP', 'SCLIPStrategy'])
class SCLIPStrategy(LastBlockStrategy):
    """Correlative self-attention in the last block."""

    def __init__(self, residual: bool = True, ffn: bool = True):
        super().__init__(residual=residual, ffn=ffn)

    def attention(self, q, k, grid_size):
        weights = softmax_(scaled_similarity(q, q))
        other = softmax_(scaled_similarity(k, k))
        if weights.requires_grad or other.requires_grad:
            return weights + other
        return weights.add_(other)  # no third (B, heads, N, N) buffer

    def attend(self, q, k, v, grid_size, images):
        """W v = softmax(q q^T / sqrt(d)) v + softmax(k k^T / sqrt(d)) v as
        two attentions of :func:`attention_values` (fused: no (N, N)
        weights are formed)."""
        return attention_values(q, q, v) + attention_values(k, k, v)
