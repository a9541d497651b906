"""Spatial aggregation of the cost volume: Swin blocks with appearance
guidance (CAT-Seg Sec. 3.3, Eq. 3; ``cvlab-kaist/CAT-Seg``
``cat_seg/modeling/transformer/model.py``, ``SwinTransformerBlockWrapper``).

Each class's cost feature map is one image to a pair of Swin blocks (window
attention, then shifted-window attention). The appearance guidance (CLIP's
dense features, projected and layer-normed) is concatenated to the
normalised tokens for the query and key projections only:
``Q = W_q [x; g]``, ``K = W_k [x; g]``, ``V = W_v x``. The blocks are the
package's :class:`~mmseg_ovss.models.blocks.guided_swin.GuidedSwinBlock`
(mmseg's ``SwinBlock`` with guided attention, shared with DCP-CLIP's
decoder) in CAT-Seg's setting: no relative position bias, a map no larger
than the window is one unshifted window, and the zero tokens that pad other
maps to whole windows are not masked.
"""
from typing import Optional

from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.models.blocks.guided_swin import GuidedSwinBlock
from mmseg_ovss.utils.errors import OVSSConfigError


@MODELS.register_module()
class SpatialAggregation(nn.Module):
    """A W-MSA and an SW-MSA guided Swin block over each class's cost map
    (CAT-Seg ``SwinTransformerBlockWrapper``), guidance layer-normed first.

    Args:
        embed_dims (int): cost-feature width d (128).
        guidance_dims (int): appearance-guidance width (128; 0: none).
        num_heads (int): heads (4).
        window_size (int): window side (12 on CAT-Seg's 24x24 maps).
        mlp_ratio (float): FFN width / d (4).
        drop_path_rate (float): drop path of both blocks (0 in CAT-Seg).
        with_cp (bool): gradient checkpointing of each block.
        position_bias, clamp_window, mask_padding (bool): the options of
            :class:`~mmseg_ovss.models.blocks.guided_swin.GuidedSwinBlock`;
            the defaults are CAT-Seg's (no bias, clamp, no padding mask).
    """

    def __init__(self, embed_dims: int, guidance_dims: int,
                 num_heads: int = 4, window_size: int = 12,
                 mlp_ratio: float = 4., drop_path_rate: float = 0.,
                 with_cp: bool = False, position_bias: bool = False,
                 clamp_window: bool = True, mask_padding: bool = False):
        super().__init__()
        self.embed_dims = embed_dims
        self.guidance_dims = guidance_dims
        self.guidance_norm = nn.LayerNorm(guidance_dims) \
            if guidance_dims > 0 else None
        self.blocks = nn.ModuleList(
            GuidedSwinBlock(embed_dims, guidance_dims, num_heads,
                            int(embed_dims * mlp_ratio),
                            window_size=window_size, shift=shift,
                            drop_path_rate=drop_path_rate, with_cp=with_cp,
                            position_bias=position_bias,
                            clamp_window=clamp_window,
                            mask_padding=mask_padding)
            for shift in (False, True))

    def forward(self, x: Tensor, guidance: Optional[Tensor]) -> Tensor:
        """(B, K, h, w, d) channel-last cost features, (B, G, h, w) guidance
        (or None) -> (B, K, h, w, d)."""
        b, k, h, w, d = x.shape
        tokens = x.reshape(b * k, h * w, d)
        if guidance is not None:
            if self.guidance_norm is None:
                raise OVSSConfigError(
                    'SpatialAggregation was built with guidance_dims=0 but '
                    'got appearance guidance')
            if guidance.shape[-2:] != (h, w) or guidance.shape[0] != b:
                raise OVSSConfigError(
                    f'appearance guidance {tuple(guidance.shape)} does not '
                    f'match the cost map (B={b}, {h}x{w})')
            guidance = self.guidance_norm(
                guidance.flatten(2).transpose(1, 2))
        for block in self.blocks:
            tokens = block(tokens, (h, w), guidance)
        return tokens.view(b, k, h, w, d)
