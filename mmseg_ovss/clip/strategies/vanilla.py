"""Vanilla CLIP: the unmodified last block (q-k attention, residual, FFN)."""

from mmseg_ovss.clip.attention import attention_values, vanilla_attention

from .base import DENSE_STRATEGIES, LastBlockStrategy


@DENSE_STRATEGIES.register_module(name=['Vanilla', 'VanillaStrategy'])
class VanillaStrategy(LastBlockStrategy):
    """softmax(q k^T / sqrt(d)) with residual and FFN: plain CLIP patches."""

    def __init__(self, residual: bool = True, ffn: bool = True):
        super().__init__(residual=residual, ffn=ffn)

    def attention(self, q, k, grid_size):
        return vanilla_attention(q, k)

    def attend(self, q, k, v, grid_size, images):
        """W v as one attention (:func:`attention_values`)."""
        return attention_values(q, k, v)
