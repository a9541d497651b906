"""Position embeddings of an open_clip ViT resized to any patch grid.

Shared by :class:`~mmseg_ovss.models.backbones.OpenCLIPViT` (which runs the
tower block by block, with the dense strategies in ``forward_dense``) and
code that resizes a ViT's position embeddings itself.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

POS_INTERP_MODES = ('size', 'size_antialias', 'dino')


def interpolate_position_embedding(pos_embed: Tensor, src_grid: Tuple[int, int],
                                   dst_grid: Tuple[int, int],
                                   mode: str = 'size') -> Tensor:
    """Bicubically resize (1 + h*w, C) position embeddings to ``dst_grid``.

    ``mode``:

    - ``'size'``: ``F.interpolate(size=dst_grid)``.
    - ``'size_antialias'``: the same with ``antialias=True`` (GEM's code).
    - ``'dino'``: DINO-style ``scale_factor=((h' + 0.1) / h, (w' + 0.1) / w)``
      as in the SCLIP, NACLIP, ClearCLIP and ProxyCLIP code; the output grid
      is still ``dst_grid`` but the sampling positions differ slightly.
    """
    if mode not in POS_INTERP_MODES:
        raise OVSSConfigError(
            f'unknown position-embedding interpolation {mode!r}; use one '
            f'of {POS_INTERP_MODES}')
    if tuple(src_grid) == tuple(dst_grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    channels = pos_embed.shape[-1]
    patch_pos = patch_pos.reshape(1, *src_grid, channels).permute(0, 3, 1, 2)
    if mode == 'dino':
        scale = tuple((dst + 0.1) / src
                      for dst, src in zip(dst_grid, src_grid))
        patch_pos = F.interpolate(patch_pos.float(), scale_factor=scale,
                                  mode='bicubic', align_corners=False)
        if tuple(patch_pos.shape[-2:]) != tuple(dst_grid):
            got = tuple(patch_pos.shape[-2:])
            raise OVSSDataError(
                f'DINO-style interpolation gave a {got} grid instead of '
                f'{tuple(dst_grid)}')
    else:
        patch_pos = F.interpolate(patch_pos.float(), size=tuple(dst_grid),
                                  mode='bicubic', align_corners=False,
                                  antialias=mode == 'size_antialias')
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(-1, channels)
    return torch.cat([cls_pos, patch_pos.to(pos_embed.dtype)], dim=0)
