"""CLIP-RC's Region Alignment Module (RAM), Eq. 4 and Fig. 3(b).

Zhang et al., CVPR 2024, Sec. 3.3: the global CLS feature G and the region
features R (reshaped to their sqrt(M) x sqrt(M) grid) are upsampled to the
patch grid and concatenated with the image features I,

    Î = Linear(Concat(Up(G), Up(R), I)),

per pixel. Up(G) broadcasts G; the mode of Up(R) is not stated: the authors'
code resizes bilinearly (``Jittor/JSeg``
``python/jseg/models/decode_heads/cliprc_head.py``, ``align_corners=False``,
the default here); ``'nearest'`` gives each pixel its own region's token.
The linear layer maps the concatenation to the decoder width (3·512 -> 512
for ViT-B/16). Table 7's switches drop G (``use_cls=False``) or R
(``use_rlb=False``) from the concatenation.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.utils.errors import OVSSConfigError

UPSAMPLE_MODES = ('bilinear', 'nearest')


def upsample_regions(regions: Tensor, region_grid: Tuple[int, int],
                     grid: Tuple[int, int], mode: str) -> Tensor:
    """(B, M, D) region tokens on ``region_grid`` -> (B, h*w, D) per patch
    on ``grid`` (Up(R) of Eq. 4)."""
    batch, _, dims = regions.shape
    maps = regions.transpose(1, 2).reshape(batch, dims, *region_grid)
    kwargs = dict(align_corners=False) if mode == 'bilinear' else {}
    maps = F.interpolate(maps, size=tuple(grid), mode=mode, **kwargs)
    return maps.flatten(2).transpose(1, 2)


@MODELS.register_module()
class RegionAlignment(BaseModule):
    """Eq. 4: fuse G, R and I per pixel with one linear layer.

    Args:
        pixel_channels (int): channels of I as the head passes it.
        token_channels (int): channels of G and R (CLIP's projected width).
        out_channels (int): the decoder width.
        use_cls (bool): put Up(G) in the concatenation (Table 7).
        use_rlb (bool): put Up(R) in the concatenation (Table 7); needs the
            region-level bridge.
        upsample (str): Up(R)'s mode, ``'bilinear'`` (authors' code) or
            ``'nearest'``.
    """

    def __init__(self,
                 pixel_channels: int,
                 token_channels: int,
                 out_channels: int,
                 use_cls: bool = True,
                 use_rlb: bool = True,
                 upsample: str = 'bilinear',
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if upsample not in UPSAMPLE_MODES:
            raise OVSSConfigError(
                f'RegionAlignment upsample={upsample!r}; use one of '
                f'{UPSAMPLE_MODES}')
        self.use_cls = bool(use_cls)
        self.use_rlb = bool(use_rlb)
        self.upsample = upsample
        in_features = pixel_channels + token_channels * (
            int(self.use_cls) + int(self.use_rlb))
        self.fuse = nn.Linear(in_features, out_channels)

    def forward(self, pixels: Tensor, cls: Tensor,
                regions: Optional[Tensor],
                region_grid: Optional[Tuple[int, int]],
                grid: Tuple[int, int]) -> Tensor:
        """(B, N, Cp) pixels, (B, D) G, (B, M, D) R -> (B, N, out)."""
        parts = []
        if self.use_cls:
            parts.append(cls.unsqueeze(1).expand(-1, pixels.shape[1], -1))
        if self.use_rlb:
            if regions is None:
                raise OVSSConfigError(
                    'RegionAlignment use_rlb=True needs the region-level '
                    'bridge (the segmentor has region_bridge=None); set '
                    'use_rlb=False or add a region_bridge')
            parts.append(upsample_regions(regions, region_grid, grid,
                                          self.upsample))
        parts.append(pixels)
        return self.fuse(torch.cat(parts, dim=-1))
