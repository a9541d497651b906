"""Swin blocks whose queries and keys also see guidance channels.

DCP-CLIP's spatial-enhance layers (Sec. III-C, Eqs. 13-14) are Swin blocks
(W-MSA then SW-MSA) with one change: ``Q, K = W_{q,k} [F ; G]`` and
``V = W_v F``, where F is the refined cost feature and G the guidance (the
shallow encoder features and the CLIP attention weights); "the rest of the
Swin Transformer's architecture and operations remain unchanged". CAT-Seg's
spatial aggregation uses the same q/k-only guidance (cvlab-kaist/CAT-Seg,
``cat_seg/modeling/transformer/model.py`` ``WindowAttention``).

The classes subclass mmseg's ``WindowMSA`` / ``ShiftWindowMSA`` /
``SwinBlock`` (relative position bias, FFN, DropPath), replacing the fused
qkv projection by q, k (from [F ; G]) and v (from F). Maps that are not
multiples of the window are zero-padded as in mmseg, and the padded tokens
are masked out of every window's attention (mmseg lets them in).
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from mmseg.models.backbones.swin import ShiftWindowMSA, SwinBlock, WindowMSA

_MASKED = -100.0  # the additive mask value of mmseg's SW-MSA


def window_region_mask(height: int, width: int, window: int, shift: int,
                       device=None) -> Optional[Tensor]:
    """Additive (windows, window**2, window**2) mask: 0 where two tokens of
    a window may attend to each other, -100 where not (the sub-regions of a
    shifted window, and padding). None when nothing is masked."""
    pad_h, pad_w = (-height) % window, (-width) % window
    if not shift and not pad_h and not pad_w:
        return None
    full_h, full_w = height + pad_h, width + pad_w
    regions = torch.zeros(full_h, full_w, device=device)
    if shift:
        count = 0
        bounds = (slice(0, -window), slice(-window, -shift),
                  slice(-shift, None))
        for rows in bounds:
            for cols in bounds:
                regions[rows, cols] = count
                count += 1
    padding = torch.zeros(full_h, full_w, dtype=torch.bool, device=device)
    padding[height:, :] = True
    padding[:, width:] = True
    # the region map is in rolled coordinates, like the shifted features
    padding = torch.roll(padding, shifts=(-shift, -shift), dims=(0, 1))
    regions = regions + 16 * padding
    windows = regions.reshape(full_h // window, window, full_w // window,
                              window).permute(0, 2, 1, 3).reshape(
                                  -1, window * window)
    differs = windows.unsqueeze(1) != windows.unsqueeze(2)
    return torch.zeros(differs.shape, device=device).masked_fill(
        differs, _MASKED)


class GuidedWindowMSA(WindowMSA):
    """mmseg ``WindowMSA`` with q, k from [x ; guidance] and v from x.

    Args:
        embed_dims (int): width of x.
        guidance_dims (int): width of the guidance (0: plain W-MSA).
        num_heads, window_size, qkv_bias, qk_scale, attn_drop_rate,
        proj_drop_rate: as mmseg's ``WindowMSA``.
    """

    def __init__(self, embed_dims: int, guidance_dims: int, num_heads: int,
                 window_size: Tuple[int, int], qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 attn_drop_rate: float = 0.0, proj_drop_rate: float = 0.0):
        super().__init__(embed_dims, num_heads, window_size,
                         qkv_bias=qkv_bias, qk_scale=qk_scale,
                         attn_drop_rate=attn_drop_rate,
                         proj_drop_rate=proj_drop_rate)
        del self.qkv
        self.guidance_dims = guidance_dims
        self.q = nn.Linear(embed_dims + guidance_dims, embed_dims,
                           bias=qkv_bias)
        self.k = nn.Linear(embed_dims + guidance_dims, embed_dims,
                           bias=qkv_bias)
        self.v = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)

    def position_bias(self) -> Tensor:
        """(heads, window**2, window**2) relative position bias."""
        area = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[
            self.relative_position_index.view(-1)].view(area, area, -1)
        return bias.permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """x: (windows * B, N, embed_dims + guidance_dims); mask: additive
        (windows, N, N) or None -> (windows * B, N, embed_dims)."""
        batch, length, _ = x.shape

        def heads(t):
            return t.reshape(batch, length, self.num_heads,
                             -1).transpose(1, 2)

        features = x[..., :self.embed_dims]
        q = heads(self.q(x)) * self.scale
        k, v = heads(self.k(x)), heads(self.v(features))
        attn = q @ k.transpose(-2, -1) + self.position_bias().unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(batch // windows, windows, self.num_heads,
                             length, length) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, length, length)
        attn = self.attn_drop(self.softmax(attn))
        out = (attn @ v).transpose(1, 2).reshape(batch, length, -1)
        return self.proj_drop(self.proj(out))


class GuidedShiftWindowMSA(ShiftWindowMSA):
    """mmseg ``ShiftWindowMSA`` over :class:`GuidedWindowMSA`."""

    def __init__(self, embed_dims: int, guidance_dims: int, num_heads: int,
                 window_size: int, shift_size: int = 0, **kwargs):
        super().__init__(embed_dims, num_heads, window_size,
                         shift_size=shift_size, **kwargs)
        self.w_msa = GuidedWindowMSA(
            embed_dims, guidance_dims, num_heads,
            (window_size, window_size),
            qkv_bias=kwargs.get('qkv_bias', True),
            qk_scale=kwargs.get('qk_scale'),
            attn_drop_rate=kwargs.get('attn_drop_rate', 0.0),
            proj_drop_rate=kwargs.get('proj_drop_rate', 0.0))

    def forward(self, query: Tensor, guidance: Optional[Tensor],
                hw_shape: Tuple[int, int]) -> Tensor:
        """query (B, H*W, C), guidance (B, H*W, G) or None -> (B, H*W, C)."""
        batch, length, channels = query.shape
        height, width = hw_shape
        window, shift = self.window_size, self.shift_size
        x = query if guidance is None else torch.cat([query, guidance], -1)
        x = x.view(batch, height, width, -1)
        pad_h, pad_w = (-height) % window, (-width) % window
        x = nn.functional.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        full_h, full_w = x.shape[1], x.shape[2]
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        mask = window_region_mask(height, width, window, shift, x.device)
        windows = self.window_partition(x).view(-1, window * window,
                                                x.shape[-1])
        out = self.w_msa(windows, mask=mask if mask is None else
                         mask.to(x.dtype))
        out = self.window_reverse(out.view(-1, window, window, channels),
                                  full_h, full_w)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        out = out[:, :height, :width].reshape(batch, length, channels)
        return self.drop(out)


class GuidedSwinBlock(SwinBlock):
    """mmseg ``SwinBlock`` whose attention takes guidance channels in q/k
    (DCP-CLIP Eqs. 13-14); ``forward(x, guidance, hw_shape)``."""

    def __init__(self, embed_dims: int, guidance_dims: int, num_heads: int,
                 feedforward_channels: int, window_size: int = 12,
                 shift: bool = False, drop_path_rate: float = 0.0,
                 **kwargs):
        super().__init__(embed_dims, num_heads, feedforward_channels,
                         window_size=window_size, shift=shift,
                         drop_path_rate=drop_path_rate, **kwargs)
        self.attn = GuidedShiftWindowMSA(
            embed_dims, guidance_dims, num_heads, window_size,
            shift_size=window_size // 2 if shift else 0,
            dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate))

    def forward(self, x: Tensor, guidance: Optional[Tensor],
                hw_shape: Tuple[int, int]) -> Tensor:
        identity = x
        x = self.attn(self.norm1(x), guidance, hw_shape) + identity
        return self.ffn(self.norm2(x), identity=x)
