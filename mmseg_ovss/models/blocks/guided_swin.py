"""Swin blocks whose queries and keys also see guidance channels.

CAT-Seg's spatial aggregation (Cho et al., CVPR 2024, Sec. 3.3, Eq. 3;
``cvlab-kaist/CAT-Seg`` ``cat_seg/modeling/transformer/model.py``,
``WindowAttention``, ``SwinTransformerBlock``) and DCP-CLIP's
spatial-enhance layers (Sec. III-C, Eqs. 13-14) are Swin blocks (W-MSA, then
SW-MSA) with one change: ``Q = W_q [F ; G]``, ``K = W_k [F ; G]`` and
``V = W_v F``, F the tokens and G the guidance.

The classes subclass mmseg's ``WindowMSA`` / ``ShiftWindowMSA`` /
``SwinBlock`` (norms, FFN, DropPath, relative position bias table), with
mmseg's fused qkv projection replaced by q, k (from [F ; G]) and v (from
F). ``W_q [F ; G]`` is computed as ``W_q[:, :C] F + W_q[:, C:] G`` so that
guidance shared by the classes folded into the batch is projected once per
image. q, k and v are computed on the map, then zero-padded to a multiple
of the window, rolled and split into windows.

The two methods differ where the papers leave the Swin block unchanged but
the code bases differ; three constructor options keep each:

- ``position_bias``: Swin's learned relative position bias (mmseg's
  ``WindowMSA``; DCP-CLIP: "the rest of the Swin Transformer's
  architecture and operations remain unchanged") or none (CAT-Seg's
  ``WindowAttention`` has no bias table).
- ``clamp_window``: a map whose shorter side is no larger than the window
  is one unshifted window of that side (CAT-Seg's
  ``SwinTransformerBlock``, after Swin's original code), or every map is
  padded to whole windows (mmseg's ``ShiftWindowMSA``; DCP-CLIP).
- ``mask_padding``: the zero tokens that pad a map to whole windows are
  masked out of every window's attention (DCP-CLIP), or they take part with
  zero keys and values (CAT-Seg's maps, 24 x 24 with 12 x 12 windows, are
  never padded; mmseg lets padded tokens in as well).
"""
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model.weight_init import trunc_normal_
from mmseg.models.backbones.swin import ShiftWindowMSA, SwinBlock, WindowMSA
from torch import Tensor

from mmseg_ovss.utils.errors import OVSSConfigError

#: The additive logit of token pairs that may not attend to each other
#: (Swin's shifted-window mask value, -100 in mmseg and CAT-Seg).
MASK_VALUE = -100.0

#: Region id added to padded tokens so they differ from every real region.
_PADDING_REGION = 16


def window_region_mask(height: int, width: int, window: int, shift: int,
                       mask_padding: bool = True,
                       device=None) -> Optional[Tensor]:
    """Additive (windows, window**2, window**2) mask of an (height, width)
    map padded to whole windows and rolled by ``shift``: 0 where two tokens
    of a window may attend to each other, :data:`MASK_VALUE` where they
    come from different sub-regions of a shifted window (Liu et al., 2021,
    Sec. 3.2) or, with ``mask_padding``, where one of them is padding.
    None when nothing is masked. Windows are in raster order."""
    pad_h, pad_w = (-height) % window, (-width) % window
    pads = mask_padding and bool(pad_h or pad_w)
    if not shift and not pads:
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
    if pads:
        padding = torch.zeros(full_h, full_w, dtype=torch.bool,
                              device=device)
        padding[height:, :] = True
        padding[:, width:] = True
        # the region map is in rolled coordinates, like the shifted tokens
        padding = torch.roll(padding, shifts=(-shift, -shift), dims=(0, 1))
        regions = regions + _PADDING_REGION * padding
    windows = regions.reshape(full_h // window, window, full_w // window,
                              window).permute(0, 2, 1, 3).reshape(
                                  -1, window * window)
    differs = windows.unsqueeze(1) != windows.unsqueeze(2)
    return torch.zeros(differs.shape, device=device).masked_fill(
        differs, MASK_VALUE)


def relative_position_index(window: int, table_window: int) -> Tensor:
    """(window**2, window**2) index into the (2 * table_window - 1)**2
    relative position bias table of mmseg's ``WindowMSA``: entry (i, j) is
    the offset of token i from token j, ``(dy + W - 1) * (2W - 1) + dx +
    W - 1`` with ``W = table_window`` (``window <= table_window``)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window),
                                        torch.arange(window),
                                        indexing='ij')).flatten(1)
    offsets = coords[:, :, None] - coords[:, None, :] + table_window - 1
    return offsets[0] * (2 * table_window - 1) + offsets[1]


class GuidedWindowMSA(WindowMSA):
    """mmseg ``WindowMSA`` with q, k from [x ; guidance] and v from x
    (CAT-Seg ``WindowAttention``; DCP-CLIP Eqs. 13-14).

    The parameters keep the shapes of CAT-Seg's code: ``q``/``k``:
    Linear(C + G, C), ``v``, ``proj``: Linear(C, C).

    Args:
        embed_dims (int): token width C.
        guidance_dims (int): guidance width G (0: plain W-MSA).
        num_heads (int): attention heads.
        window_size (int | tuple[int, int]): (square) window side.
        qkv_bias (bool): biases of q, k, v.
        qk_scale (float, optional): logit scale (default head_dims**-0.5).
        attn_drop_rate, proj_drop_rate (float): dropout rates.
        position_bias (bool): Swin's relative position bias (True: mmseg
            and DCP-CLIP; False: CAT-Seg, no bias table).
    """

    def __init__(self, embed_dims: int, guidance_dims: int, num_heads: int,
                 window_size: Union[int, Tuple[int, int]],
                 qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 attn_drop_rate: float = 0., proj_drop_rate: float = 0.,
                 position_bias: bool = True, init_cfg=None):
        if embed_dims % num_heads:
            raise OVSSConfigError(
                f'embed_dims={embed_dims} is not divisible by '
                f'num_heads={num_heads}')
        if isinstance(window_size, int):
            window_size = (window_size, window_size)
        if window_size[0] != window_size[1]:
            raise OVSSConfigError(
                f'window_size={tuple(window_size)}: only square windows '
                'are supported')
        super().__init__(embed_dims, num_heads, tuple(window_size),
                         qkv_bias=qkv_bias, qk_scale=qk_scale,
                         attn_drop_rate=attn_drop_rate,
                         proj_drop_rate=proj_drop_rate, init_cfg=init_cfg)
        del self.qkv
        if not position_bias:
            del self.relative_position_bias_table
            del self.relative_position_index
        self.use_position_bias = position_bias
        self.guidance_dims = guidance_dims
        self.q = nn.Linear(embed_dims + guidance_dims, embed_dims,
                           bias=qkv_bias)
        self.k = nn.Linear(embed_dims + guidance_dims, embed_dims,
                           bias=qkv_bias)
        self.v = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)

    def init_weights(self):
        """mmseg's init of the bias table (truncated normal, std 0.02)."""
        if self.use_position_bias:
            trunc_normal_(self.relative_position_bias_table, std=.02)

    def project(self, x: Tensor, guidance: Optional[Tensor]
                ) -> Tuple[Tensor, Tensor, Tensor]:
        """q, k, v (N, L, C) of tokens x (N, L, C); ``guidance`` (B, L, G)
        with N a multiple of B (the N / B classes of each image share its
        guidance, classes folded image-major) or None."""
        if guidance is None:
            if self.guidance_dims:
                raise OVSSConfigError(
                    f'this attention was built for {self.guidance_dims} '
                    'guidance channels but got no guidance: pass the (B, '
                    'L, G) guidance, or build it with guidance_dims=0')
            return self.q(x), self.k(x), self.v(x)
        n, length, c = x.shape
        if guidance.shape[-1] != self.guidance_dims:
            raise OVSSConfigError(
                f'guidance has {guidance.shape[-1]} channels, the attention '
                f'was built for {self.guidance_dims}: set guidance_dims='
                f'{guidance.shape[-1]}')
        b = guidance.shape[0]
        if guidance.shape[1] != length or n % b:
            raise OVSSConfigError(
                f'guidance {tuple(guidance.shape)} does not fit {n} maps of '
                f'{length} tokens: give (B, L, G) with B dividing {n}')
        guidance = guidance.to(x.dtype)

        def guided(linear: nn.Linear) -> Tensor:
            own = F.linear(x, linear.weight[:, :c], linear.bias)
            extra = F.linear(guidance, linear.weight[:, c:])
            return (own.view(b, n // b, length, -1) +
                    extra.unsqueeze(1)).view(n, length, -1)

        return guided(self.q), guided(self.k), self.v(x)

    def position_bias(self, window: Optional[int] = None) -> Optional[Tensor]:
        """(heads, window**2, window**2) relative position bias of a window
        no larger than the table's (default: the table's), or None without
        position bias."""
        if not self.use_position_bias:
            return None
        full = self.window_size[0]
        window = full if window is None else window
        if window == full:
            index = self.relative_position_index
        else:
            index = relative_position_index(window, full).to(
                self.relative_position_bias_table.device)
        area = window * window
        bias = self.relative_position_bias_table[index.reshape(-1)]
        return bias.view(area, area, -1).permute(2, 0, 1)

    def forward(self, q: Tensor, k: Tensor, v: Tensor,
                mask: Optional[Tensor] = None,
                window: Optional[int] = None) -> Tensor:
        """Attention inside each window: q, k, v (N, windows, T, C) with
        T = window**2 (default window: the table's), mask additive
        (windows, T, T) or None -> (N, windows, T, C) after the output
        projection."""
        n, windows, tokens, c = q.shape
        heads = self.num_heads
        window = self.window_size[0] if window is None else window
        if tokens != window * window:
            raise OVSSConfigError(
                f'{tokens} tokens per window do not form a {window}x{window}'
                ' window')

        def split(t: Tensor) -> Tensor:
            return t.view(n, windows, tokens, heads, c // heads).transpose(
                2, 3)

        bias = self.position_bias(window)
        attn_mask = None
        if mask is not None:
            attn_mask = mask.to(q.dtype).unsqueeze(1)
        if bias is not None:
            bias = bias.to(q.dtype)
            attn_mask = bias if attn_mask is None else attn_mask + bias
        out = F.scaled_dot_product_attention(
            split(q), split(k), split(v), attn_mask=attn_mask,
            dropout_p=self.attn_drop.p if self.training else 0.,
            scale=self.scale)
        out = out.transpose(2, 3).reshape(n, windows, tokens, c)
        return self.proj_drop(self.proj(out))


class GuidedShiftWindowMSA(ShiftWindowMSA):
    """mmseg ``ShiftWindowMSA`` over :class:`GuidedWindowMSA`:
    ``forward(query, hw_shape, guidance)``.

    Args:
        embed_dims, guidance_dims, num_heads: as :class:`GuidedWindowMSA`.
        window_size (int): window side.
        shift_size (int): cyclic shift of the windows (0: W-MSA).
        qkv_bias, qk_scale, attn_drop_rate, proj_drop_rate, dropout_layer:
            as mmseg's ``ShiftWindowMSA``.
        position_bias (bool): see :class:`GuidedWindowMSA`.
        clamp_window (bool): a map no larger than the window (shorter side)
            is one unshifted window of that side (CAT-Seg) instead of being
            padded (mmseg, DCP-CLIP).
        mask_padding (bool): mask the padded tokens out of the attention
            (DCP-CLIP) instead of letting them in with zero keys and values
            (CAT-Seg).
    """

    def __init__(self, embed_dims: int, guidance_dims: int, num_heads: int,
                 window_size: int, shift_size: int = 0,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 attn_drop_rate: float = 0., proj_drop_rate: float = 0.,
                 dropout_layer: Optional[dict] = None,
                 position_bias: bool = True, clamp_window: bool = False,
                 mask_padding: bool = True, init_cfg=None):
        if not 0 <= shift_size < window_size:
            raise OVSSConfigError(
                f'shift_size={shift_size} must be in [0, window_size='
                f'{window_size})')
        dropout_layer = dropout_layer or dict(type='DropPath', drop_prob=0.)
        super().__init__(embed_dims, num_heads, window_size,
                         shift_size=shift_size, qkv_bias=qkv_bias,
                         qk_scale=qk_scale, attn_drop_rate=attn_drop_rate,
                         proj_drop_rate=proj_drop_rate,
                         dropout_layer=dropout_layer, init_cfg=init_cfg)
        self.w_msa = GuidedWindowMSA(
            embed_dims, guidance_dims, num_heads, window_size,
            qkv_bias=qkv_bias, qk_scale=qk_scale,
            attn_drop_rate=attn_drop_rate, proj_drop_rate=proj_drop_rate,
            position_bias=position_bias)
        self.clamp_window = clamp_window
        self.mask_padding = mask_padding
        self._masks: Dict[tuple, Optional[Tensor]] = {}

    def effective_window(self, height: int, width: int) -> Tuple[int, int]:
        """(window, shift) on a (height, width) map."""
        if self.clamp_window and min(height, width) <= self.window_size:
            return min(height, width), 0
        return self.window_size, self.shift_size

    def region_mask(self, height: int, width: int, window: int, shift: int,
                    device) -> Optional[Tensor]:
        """:func:`window_region_mask` of this map, cached for its size."""
        key = (height, width, window, shift, device)
        if key not in self._masks:
            self._masks = {key: window_region_mask(
                height, width, window, shift, self.mask_padding, device)}
        return self._masks[key]

    def forward(self, query: Tensor, hw_shape: Tuple[int, int],
                guidance: Optional[Tensor] = None) -> Tensor:
        """query (N, H*W, C) normalised tokens, guidance (B, H*W, G) (B
        dividing N) or None -> (N, H*W, C)."""
        n, length, c = query.shape
        height, width = hw_shape
        if length != height * width:
            raise OVSSConfigError(
                f'{length} tokens do not form a {height}x{width} map')
        qkv = torch.cat(self.w_msa.project(query, guidance), dim=-1)
        qkv = qkv.view(n, height, width, 3 * c)
        window, shift = self.effective_window(height, width)
        pad_h, pad_w = (-height) % window, (-width) % window
        if pad_h or pad_w:
            qkv = F.pad(qkv, (0, 0, 0, pad_w, 0, pad_h))
        full_h, full_w = qkv.shape[1:3]
        if shift:
            qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2))
        mask = self.region_mask(height, width, window, shift, query.device)
        windows = qkv.view(n, full_h // window, window, full_w // window,
                           window, 3 * c).permute(0, 1, 3, 2, 4, 5).reshape(
                               n, -1, window * window, 3 * c)
        out = self.w_msa(*windows.chunk(3, dim=-1), mask=mask,
                         window=window)
        out = out.view(n, full_h // window, full_w // window, window, window,
                       c).permute(0, 1, 3, 2, 4, 5).reshape(
                           n, full_h, full_w, c)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        out = out[:, :height, :width].reshape(n, length, c)
        return self.drop(out)

    #: CAT-Seg's attention had q, k, v, proj directly under ``attn.`` (the
    #: authors' ``WindowAttention`` in ``cat_seg/modeling/transformer/
    #: model.py`` and this package's earlier CAT-Seg module); they now live
    #: in ``attn.w_msa.``. Old key (relative to this module) -> new key;
    #: ``mmseg_ovss.engine.checkpoint.KeyMatch`` reads the same map.
    legacy_state_keys = {f'{name}.{param}': f'w_msa.{name}.{param}'
                         for name in ('q', 'k', 'v', 'proj')
                         for param in ('weight', 'bias')}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        for old, new in self.legacy_state_keys.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)


class GuidedSwinBlock(SwinBlock):
    """mmseg ``SwinBlock`` (pre-norm attention and FFN residuals) with
    :class:`GuidedShiftWindowMSA` as its attention (CAT-Seg
    ``SwinTransformerBlock``; DCP-CLIP Eqs. 13-14):
    ``forward(x, hw_shape, guidance)``.

    Args:
        embed_dims, guidance_dims, num_heads: as :class:`GuidedWindowMSA`.
        feedforward_channels (int): FFN width.
        window_size (int): window side.
        shift (bool): SW-MSA (shift by half a window) instead of W-MSA.
        qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate,
        act_cfg, norm_cfg, with_cp: as mmseg's ``SwinBlock``.
        position_bias, clamp_window, mask_padding: see
            :class:`GuidedShiftWindowMSA` (CAT-Seg: False, True, False;
            DCP-CLIP: True, False, True).
    """

    def __init__(self, embed_dims: int, guidance_dims: int, num_heads: int,
                 feedforward_channels: int, window_size: int = 12,
                 shift: bool = False, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop_rate: float = 0.,
                 attn_drop_rate: float = 0., drop_path_rate: float = 0.,
                 act_cfg=dict(type='GELU'), norm_cfg=dict(type='LN'),
                 with_cp: bool = False, position_bias: bool = True,
                 clamp_window: bool = False, mask_padding: bool = True,
                 init_cfg=None):
        super().__init__(
            embed_dims=embed_dims, num_heads=num_heads,
            feedforward_channels=feedforward_channels,
            window_size=window_size, shift=shift, qkv_bias=qkv_bias,
            qk_scale=qk_scale, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            act_cfg=act_cfg, norm_cfg=norm_cfg, with_cp=with_cp,
            init_cfg=init_cfg)
        self.attn = GuidedShiftWindowMSA(
            embed_dims, guidance_dims, num_heads, window_size,
            shift_size=window_size // 2 if shift else 0, qkv_bias=qkv_bias,
            qk_scale=qk_scale, attn_drop_rate=attn_drop_rate,
            proj_drop_rate=drop_rate,
            dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate),
            position_bias=position_bias, clamp_window=clamp_window,
            mask_padding=mask_padding)

    def forward(self, x: Tensor, hw_shape: Tuple[int, int],
                guidance: Optional[Tensor] = None) -> Tensor:
        """x (N, H*W, C), guidance (B, H*W, G) (B dividing N) or None."""

        def inner(x: Tensor) -> Tensor:
            x = x + self.attn(self.norm1(x), hw_shape, guidance)
            return self.ffn(self.norm2(x), identity=x)

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(inner, x, use_reentrant=False)
        return inner(x)
