"""MaskCLIP (Zhou et al., ECCV 2022): value embeddings of the last block.

The attention is the identity, so the block's attention output is
``out_proj(v)``. Official (as the ClearCLIP repository runs it,
``mc-lan/ClearCLIP`` ``open_clip/transformer.py``,
``VisionTransformer.forward`` with ``ignore_residual=True``): no residual,
no FFN. FreeCP's variant keeps the FFN (``ffn=True``; ``chenqi1126/FreeCP``
``open_clip/transformer.py``, ``forward_all``).
"""
from .base import DENSE_STRATEGIES, LastBlockStrategy


@DENSE_STRATEGIES.register_module(name=['MaskCLIP', 'MaskCLIPStrategy'])
class MaskCLIPStrategy(LastBlockStrategy):
    """y = out_proj(v(ln_1(x))) [+ FFN]."""

    def __init__(self, residual: bool = False, ffn: bool = False):
        super().__init__(residual=residual, ffn=ffn)

    def attend(self, q, k, v, grid_size, images):
        return v
