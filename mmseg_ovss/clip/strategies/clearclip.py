"""ClearCLIP (Lan et al., ECCV 2024): q-q attention, no residual, no FFN."""

from mmseg_ovss.clip.attention import attention_values, scaled_similarity

from .base import DENSE_STRATEGIES, LastBlockStrategy


@DENSE_STRATEGIES.register_module(name=['ClearCLIP', 'ClearCLIPStrategy'])
class ClearCLIPStrategy(LastBlockStrategy):
    """W = softmax(q q^T / sqrt(d)); y = out_proj(W v)."""

    def __init__(self, residual: bool = False, ffn: bool = False):
        super().__init__(residual=residual, ffn=ffn)

    def attention(self, q, k, grid_size):
        return scaled_similarity(q, q).softmax(dim=-1)

    def attend(self, q, k, v, grid_size, images):
        """W v as one attention (:func:`attention_values`) of queries q
        over keys q."""
        return attention_values(q, q, v)
