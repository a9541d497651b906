"""CLIP-RC's recovery decoder (training only), Eq. 9 and Table 8.

Zhang et al., CVPR 2024, Sec. 3.4: from the decoder's outputs (Î_d, R̂_d)
a decoder of the same architecture recovers the backbone's image features
I and the pre-projection regional descriptors R̂,

    Î_r, R̂_r = RD(Î_d, R̂_d), RD'(R̂_d, Î_d)               (Eq. 9)

and the recovery loss (Eq. 10, ``FeatureRecoveryLoss``) pulls them to the
originals. As the authors' ``RecoveryDecoder`` (``Jittor/JSeg``
``python/jseg/ops/cliprc_ops.py``): an input linear per side, ``num_layers``
bidirectional layers (1 by default, Table 8 tries 0-3), output heads
D -> 2D for the descriptors and D -> the image features' width. With
``num_layers=0`` only the linear maps remain: Table 8's "0 layers" row,
the loss taken between the decoder's own features and the originals
through a dimension-matching map. The targets are detached by the head
(stop-gradient; JSeg's training loss is not public).
"""
from typing import Tuple

from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.utils.errors import OVSSConfigError

from .decoder import bidirectional_step, build_layers, init_linear_and_norm


@MODELS.register_module()
class RecoveryDecoder(BaseModule):
    """Eq. 9: recover R̂ and I from the decoder outputs.

    Args:
        embed_dims (int): the decoder width D.
        query_target_dims (int): width of R̂ (2x the CLIP embedding width).
        pixel_target_dims (int): width of the image-feature target.
        num_layers (int): bidirectional layers, 0-3 in Table 8 (1).
        num_heads, ffn_ratio, dropout, attn_dropout: as the decoder's.
    """

    def __init__(self,
                 embed_dims: int,
                 query_target_dims: int,
                 pixel_target_dims: int,
                 num_layers: int = 1,
                 num_heads: int = 8,
                 ffn_ratio: int = 4,
                 dropout: float = 0.1,
                 attn_dropout: float = 0.1,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) \
                or num_layers < 0:
            raise OVSSConfigError(
                f'recovery num_layers={num_layers!r} must be an int >= 0 '
                '(CLIP-RC Table 8: 0-3, 1 by default)')
        self.num_layers = num_layers
        self.query_in = nn.Linear(embed_dims, embed_dims)
        self.pixel_in = nn.Linear(embed_dims, embed_dims)
        args = (embed_dims, num_heads, ffn_ratio, dropout, attn_dropout)
        self.query_layers = build_layers(num_layers, *args)
        self.pixel_layers = build_layers(num_layers, *args)
        self.query_out = nn.Linear(embed_dims, query_target_dims)
        self.pixel_out = nn.Linear(embed_dims, pixel_target_dims)
        init_linear_and_norm(self)

    def forward(self, queries: Tensor, pixels: Tensor
                ) -> Tuple[Tensor, Tensor]:
        """Decoder outputs (B', Q, D), (B', N, D) -> recovered R̂ (B', Q,
        query_target_dims) and I (B', N, pixel_target_dims)."""
        q, p = self.query_in(queries), self.pixel_in(pixels)
        for query_layer, pixel_layer in zip(self.query_layers,
                                            self.pixel_layers):
            q, p = bidirectional_step(query_layer, pixel_layer, q, p)
        return self.query_out(q), self.pixel_out(p)
