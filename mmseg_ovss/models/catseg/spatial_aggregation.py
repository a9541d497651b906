"""Spatial aggregation of the cost volume: Swin blocks with appearance
guidance (CAT-Seg Sec. 3.3, Eq. 3; ``KU-CVLAB/CAT-Seg``
``cat_seg/modeling/transformer/model.py``, ``WindowAttention``,
``SwinTransformerBlock``, ``SwinTransformerBlockWrapper``).

Each class's cost feature map is one image to a pair of Swin blocks (window
attention, then shifted-window attention). The appearance guidance (CLIP's
dense features, projected and layer-normed) is concatenated to the
normalised tokens for the query and key projections only:
``Q = W_q [x; g]``, ``K = W_k [x; g]``, ``V = W_v x``. The blocks are
mmseg's :class:`~mmseg.models.backbones.swin.SwinBlock` (norms, FFN, drop
path) with this guided attention in place of its ``ShiftWindowMSA``; as in
CAT-Seg's code there is no relative position bias, and a map no larger than
the window is one unshifted window.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks.transformer import build_dropout
from mmseg.models.backbones.swin import SwinBlock
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.utils.errors import OVSSConfigError

#: The logit Swin's shifted-window mask gives to pairs of tokens from
#: different regions of a rolled window (mmseg and CAT-Seg use -100).
SHIFT_MASK_VALUE = -100.0


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B, nW, window*window, C), windows in raster order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(
        b, (h // window) * (w // window), window * window, c)


def window_merge(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B, nW, window*window, C) ->
    (B, H, W, C)."""
    b, c = windows.shape[0], windows.shape[-1]
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def shifted_window_mask(h: int, w: int, window: int, shift: int,
                        device=None, dtype=torch.float32) -> Tensor:
    """(nW, N, N) additive mask of shifted-window attention on an (h, w)
    map (multiples of ``window``): tokens that came from different regions
    before the cyclic shift get :data:`SHIFT_MASK_VALUE` (Liu et al., 2021,
    Sec. 3.2; mmseg's ``ShiftWindowMSA``)."""
    regions = torch.zeros((1, h, w, 1), device=device)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    count = 0
    for rows in bounds:
        for cols in bounds:
            regions[:, rows, cols, :] = count
            count += 1
    ids = window_partition(regions, window).squeeze(-1)[0]  # (nW, N)
    different = ids.unsqueeze(1) != ids.unsqueeze(2)
    mask = torch.zeros(different.shape, device=device, dtype=dtype)
    return mask.masked_fill_(different, SHIFT_MASK_VALUE)


class GuidedWindowAttention(nn.Module):
    """(Shifted-)window multi-head attention whose queries and keys also see
    a guidance map (CAT-Seg ``WindowAttention``).

    ``q = W_q [x; g]`` is computed as ``W_q[:, :C] x + W_q[:, C:] g`` so that
    the per-image guidance is projected once and broadcast over the classes
    folded into the batch; the parameters keep CAT-Seg's shapes
    (``q``/``k``: Linear(C + G, C), ``v``, ``proj``: Linear(C, C)).

    Args:
        embed_dims (int): token width C.
        guidance_dims (int): guidance width G (0: no guidance).
        num_heads (int): attention heads.
        window_size (int): window side.
        shift_size (int): cyclic shift of the windows (0: W-MSA).
        qkv_bias (bool): biases of q, k, v.
        attn_drop_rate, proj_drop_rate (float): dropout rates.
        dropout_layer (dict): mmcv dropout config of the output (drop
            path), as mmseg's ``ShiftWindowMSA``.
    """

    def __init__(self, embed_dims: int, guidance_dims: int, num_heads: int,
                 window_size: int, shift_size: int = 0, qkv_bias: bool = True,
                 attn_drop_rate: float = 0., proj_drop_rate: float = 0.,
                 dropout_layer: Optional[dict] = None):
        super().__init__()
        if embed_dims % num_heads:
            raise OVSSConfigError(
                f'embed_dims={embed_dims} is not divisible by '
                f'num_heads={num_heads}')
        if not 0 <= shift_size < window_size:
            raise OVSSConfigError(
                f'shift_size={shift_size} must be in [0, window_size='
                f'{window_size})')
        self.embed_dims = embed_dims
        self.guidance_dims = guidance_dims
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.q = nn.Linear(embed_dims + guidance_dims, embed_dims,
                           bias=qkv_bias)
        self.k = nn.Linear(embed_dims + guidance_dims, embed_dims,
                           bias=qkv_bias)
        self.v = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.attn_drop_rate = float(attn_drop_rate)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)
        self.drop = build_dropout(
            dropout_layer or dict(type='DropPath', drop_prob=0.))
        self._masks: Dict[tuple, Tensor] = {}

    def effective_window(self, h: int, w: int) -> Tuple[int, int]:
        """(window, shift) on an (h, w) map: a map no larger than the window
        is one unshifted window (CAT-Seg ``SwinTransformerBlock``)."""
        if min(h, w) <= self.window_size:
            return min(h, w), 0
        return self.window_size, self.shift_size

    def project(self, linear: nn.Linear, x: Tensor,
                guidance: Optional[Tensor]) -> Tensor:
        """``linear([x; g])`` for (B*K, L, C) tokens and (B, L, G)
        guidance broadcast over the K classes of each image."""
        if guidance is None:
            if self.guidance_dims:
                raise OVSSConfigError(
                    f'this attention was built for {self.guidance_dims} '
                    'guidance channels but got no guidance')
            return linear(x)
        if guidance.shape[-1] != self.guidance_dims:
            raise OVSSConfigError(
                f'guidance has {guidance.shape[-1]} channels, the attention '
                f'was built for {self.guidance_dims}')
        c = x.shape[-1]
        own = F.linear(x, linear.weight[:, :c], linear.bias)
        guided = F.linear(guidance.to(x.dtype), linear.weight[:, c:])
        b, length = guidance.shape[:2]
        out = own.view(b, -1, length, own.shape[-1]) + guided.unsqueeze(1)
        return out.view(own.shape)

    def shift_mask(self, h: int, w: int, window: int, shift: int,
                   ref: Tensor) -> Tensor:
        key = (h, w, window, shift, ref.device, ref.dtype)
        mask = self._masks.get(key)
        if mask is None:
            mask = shifted_window_mask(h, w, window, shift, ref.device,
                                       ref.dtype)
            self._masks = {key: mask}
        return mask

    def forward(self, x: Tensor, hw_shape: Tuple[int, int],
                guidance: Optional[Tensor] = None) -> Tensor:
        """Attention output (B*K, h*w, C) of normalised tokens x (B*K, h*w,
        C); ``guidance`` (B, h*w, G) or None."""
        n, length, c = x.shape
        h, w = hw_shape
        if length != h * w:
            raise OVSSConfigError(
                f'{length} tokens do not form an {h}x{w} map')
        qkv = torch.cat([self.project(self.q, x, guidance),
                         self.project(self.k, x, guidance), self.v(x)],
                        dim=-1).view(n, h, w, 3 * c)
        window, shift = self.effective_window(h, w)
        pad_b, pad_r = (-h) % window, (-w) % window
        if pad_b or pad_r:
            qkv = F.pad(qkv, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = qkv.shape[1:3]
        mask = None
        if shift:
            qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2))
            mask = self.shift_mask(hp, wp, window, shift, x)[:, None]
        windows = window_partition(qkv, window)  # (n, nW, N, 3C)
        nw, tokens = windows.shape[1:3]
        heads = self.num_heads
        windows = windows.view(n, nw, tokens, 3, heads, c // heads)
        q, k, v = windows.permute(3, 0, 1, 4, 2, 5).unbind(0)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask,
            dropout_p=self.attn_drop_rate if self.training else 0.)
        out = out.transpose(2, 3).reshape(n, nw, tokens, c)
        out = window_merge(out, window, hp, wp)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        out = out[:, :h, :w].reshape(n, length, c)
        return self.drop(self.proj_drop(self.proj(out)))


class GuidedSwinBlock(SwinBlock):
    """mmseg's ``SwinBlock`` (pre-norm attention and FFN residuals) with
    :class:`GuidedWindowAttention` as its attention."""

    def __init__(self, embed_dims: int, guidance_dims: int, num_heads: int,
                 feedforward_channels: int, window_size: int = 12,
                 shift: bool = False, qkv_bias: bool = True,
                 drop_rate: float = 0., attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0., act_cfg=dict(type='GELU'),
                 norm_cfg=dict(type='LN'), with_cp: bool = False):
        super().__init__(
            embed_dims=embed_dims, num_heads=num_heads,
            feedforward_channels=feedforward_channels,
            window_size=window_size, shift=shift, qkv_bias=qkv_bias,
            drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate, act_cfg=act_cfg,
            norm_cfg=norm_cfg, with_cp=with_cp)
        self.attn = GuidedWindowAttention(
            embed_dims, guidance_dims, num_heads, window_size,
            shift_size=window_size // 2 if shift else 0, qkv_bias=qkv_bias,
            attn_drop_rate=attn_drop_rate, proj_drop_rate=drop_rate,
            dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate))

    def forward(self, x: Tensor, hw_shape: Tuple[int, int],
                guidance: Optional[Tensor] = None) -> Tensor:
        def inner(x: Tensor) -> Tensor:
            x = x + self.attn(self.norm1(x), hw_shape, guidance)
            return self.ffn(self.norm2(x), identity=x)

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(inner, x, use_reentrant=False)
        return inner(x)


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
    """

    def __init__(self, embed_dims: int, guidance_dims: int,
                 num_heads: int = 4, window_size: int = 12,
                 mlp_ratio: float = 4., drop_path_rate: float = 0.,
                 with_cp: bool = False):
        super().__init__()
        self.embed_dims = embed_dims
        self.guidance_dims = guidance_dims
        self.guidance_norm = nn.LayerNorm(guidance_dims) \
            if guidance_dims > 0 else None
        self.blocks = nn.ModuleList(
            GuidedSwinBlock(embed_dims, guidance_dims, num_heads,
                            int(embed_dims * mlp_ratio),
                            window_size=window_size, shift=shift,
                            drop_path_rate=drop_path_rate, with_cp=with_cp)
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
