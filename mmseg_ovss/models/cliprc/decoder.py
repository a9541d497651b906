"""The relation decoder of ZegCLIP and CLIP-RC (CLIP-RC Eqs. 7-8, Fig. 3(c)).

Layers as the authors' ``TPN_DecoderLayer`` (``ZiqinZhou66/ZegCLIP``
``models/decode_heads/decode_seg.py``; ``Jittor/JSeg``
``python/jseg/ops/cliprc_ops.py``): multi-head cross-attention (separate
q/k/v projections with bias, output projection, dropout 0.1 on the
attention weights), residual and LayerNorm, FFN (x4, ReLU, dropout 0.1),
residual and LayerNorm (post-norm); no self-attention.

* ZegCLIP (``bidirectional=False``, ``mask='attention'``): queries attend
  to the pixels, which stay fixed; the mask is the last layer's
  cross-attention logits, scaled ``q k^T / sqrt(d)`` averaged over heads.
  The rest of that last layer does not reach the output in ZegCLIP's code,
  so it is not built here (same output, no parameters without gradient;
  ZegCLIP's code holds and counts them). ZegCLIP's head also stacks every
  layer's map in training, but its loss reads only the last one (no deep
  supervision, no auxiliary outputs), so only the last is computed.
* CLIP-RC (``bidirectional=True``, ``mask='dot'``, Eq. 7): in every layer
  the queries attend to the pixels and the pixels to the queries, both from
  the layer's inputs (simultaneously); the pixel-side FFN's last linear
  layer starts at zero (JSeg ``init_weights``). Eq. 8: each region's map
  is ``R̂_d,m Î_d^T`` (a plain dot product) and the M maps are averaged.

``joint_queries=True`` (default, JSeg) decodes all M·C queries as one
sequence, so the pixels attend to all of them; False decodes each region's
C queries with its own copy of the pixels (the regions as a batch). The
queries never attend to each other, so the two differ only on the pixel
side.

Attention dropout in training (:func:`attention`): on the CPU,
``scaled_dot_product_attention`` with ``dropout_p > 0`` falls back to its
explicit path and draws its mask with ``bernoulli_``; at CLIP-RC's
(8 heads, 2,496 x 1,024) maps that made one attention's forward and
backward about 4 x the cost of the same attention without dropout. The CPU
path here draws the same mask (each weight dropped independently with
probability p, the kept ones scaled by 1 / (1 - p)) from ``torch.rand``,
stores it as a bool and applies the scale to the (smaller) output. CUDA
keeps the fused kernel.
"""
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.utils.errors import OVSSConfigError

MASK_READOUTS = ('dot', 'attention')


def init_linear_and_norm(module: nn.Module) -> None:
    """The authors' head init: Linear ~ N(0, 0.02^2) truncated at +-2,
    bias 0; LayerNorm weight 1, bias 0 (``trunc_normal_init`` /
    ``constant_init`` in ZegCLIP's and JSeg's heads)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _check_heads(dims: int, num_heads: int) -> int:
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or \
            num_heads < 1 or dims % num_heads:
        raise OVSSConfigError(
            f'num_heads={num_heads!r} must be an int >= 1 dividing the '
            f'decoder width {dims}')
    return dims // num_heads


def attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float) -> Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for (..., N, d) tensors, each
    attention weight dropped with probability ``dropout_p`` and the others
    scaled by ``1 / (1 - dropout_p)`` (as ``scaled_dot_product_attention``).

    With dropout on the CPU the weights are formed explicitly and the mask
    comes from ``torch.rand(...) < p`` (a bool; the scale is applied to the
    output rather than to every weight); elsewhere, and without dropout,
    this is ``scaled_dot_product_attention``.
    """
    if dropout_p == 0.0 or q.device.type != 'cpu':
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    if dropout_p >= 1.0:
        return torch.zeros(q.shape[:-1] + v.shape[-1:], dtype=v.dtype,
                           device=v.device)
    logits = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    weights = torch.softmax(logits, dim=-1)
    dropped = torch.rand(weights.shape, device=weights.device) < dropout_p
    out = torch.matmul(weights.masked_fill(dropped, 0.0), v)
    return out * (1.0 / (1.0 - dropout_p))


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` (queries) over ``memory`` (keys and
    values), by :func:`attention`."""

    def __init__(self, dims: int, num_heads: int, attn_dropout: float = 0.1):
        super().__init__()
        self.head_dims = _check_heads(dims, num_heads)
        self.num_heads = num_heads
        self.attn_dropout = float(attn_dropout)
        self.q = nn.Linear(dims, dims)
        self.k = nn.Linear(dims, dims)
        self.v = nn.Linear(dims, dims)
        self.proj = nn.Linear(dims, dims)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dims).transpose(1, 2)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        q = self._heads(self.q(x))
        k = self._heads(self.k(memory))
        v = self._heads(self.v(memory))
        out = attention(q, k, v,
                        self.attn_dropout if self.training else 0.0)
        b, _, n, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class AttentionLogits(nn.Module):
    """ZegCLIP's mask: ``q k^T / sqrt(d)`` of a cross-attention, averaged
    over its heads, for (B, Nq, D) queries and (B, N, D) pixels.

    The head mean of per-head dot products is the full-width dot product
    divided by the number of heads, so it is one (Nq x N) product.
    """

    def __init__(self, dims: int, num_heads: int):
        super().__init__()
        self.head_dims = _check_heads(dims, num_heads)
        self.num_heads = num_heads
        self.q = nn.Linear(dims, dims)
        self.k = nn.Linear(dims, dims)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        scale = self.head_dims ** -0.5 / self.num_heads
        return torch.matmul(self.q(x) * scale, self.k(memory).transpose(1, 2))


class CrossAttentionLayer(nn.Module):
    """One post-norm decoder layer: cross-attention, then FFN."""

    def __init__(self, dims: int, num_heads: int, ffn_ratio: int = 4,
                 dropout: float = 0.1, attn_dropout: float = 0.1):
        super().__init__()
        self.attn = CrossAttention(dims, num_heads, attn_dropout)
        self.norm_attn = nn.LayerNorm(dims)
        self.ffn_in = nn.Linear(dims, dims * ffn_ratio)
        self.ffn_out = nn.Linear(dims * ffn_ratio, dims)
        self.norm_ffn = nn.LayerNorm(dims)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        x = self.norm_attn(x + self.dropout(self.attn(x, memory)))
        hidden = self.dropout(F.relu(self.ffn_in(x)))
        return self.norm_ffn(x + self.dropout(self.ffn_out(hidden)))


def build_layers(count: int, dims: int, num_heads: int, ffn_ratio: int,
                 dropout: float, attn_dropout: float) -> nn.ModuleList:
    return nn.ModuleList(
        CrossAttentionLayer(dims, num_heads, ffn_ratio, dropout, attn_dropout)
        for _ in range(count))


def bidirectional_step(query_layer: nn.Module, pixel_layer: nn.Module,
                       queries: Tensor, pixels: Tensor
                       ) -> Tuple[Tensor, Tensor]:
    """Eq. 7 for one layer: both sides from the layer's inputs."""
    return query_layer(queries, pixels), pixel_layer(pixels, queries)


@dataclass
class DecoderOutput:
    """What :class:`RelationDecoder` returns.

    Attributes:
        logits: (B, C, N) class maps over the N pixels (Eq. 8: mean over
            the regions).
        queries: final queries, (B, M*C, D) joint or (B*M, C, D) per region
            (None with ``mask='attention'``: its last layer is not run).
        pixels: final pixel features, (B, N, D) or (B*M, N, D).
    """
    logits: Tensor
    queries: Tensor
    pixels: Tensor


@MODELS.register_module()
class RelationDecoder(BaseModule):
    """Eqs. 7-8 (CLIP-RC) and ZegCLIP's one-way decoder.

    Args:
        embed_dims (int): width (512 in both papers' code).
        num_layers (int): layers (3).
        num_heads (int): attention heads (8).
        ffn_ratio (int): FFN hidden width / embed_dims (4).
        dropout (float): dropout after attention, in and after the FFN.
        attn_dropout (float): dropout on the attention weights.
        bidirectional (bool): pixels attend to the queries too (CLIP-RC).
        mask (str): ``'dot'`` (CLIP-RC: final queries · final pixels) or
            ``'attention'`` (ZegCLIP: last layer's head-averaged attention
            logits).
        joint_queries (bool): all M·C queries in one sequence (default) or
            each region decoded separately.
        zero_init_pixel_ffn (bool): the pixel side's last FFN linear starts
            at zero (JSeg).
    """

    def __init__(self,
                 embed_dims: int = 512,
                 num_layers: int = 3,
                 num_heads: int = 8,
                 ffn_ratio: int = 4,
                 dropout: float = 0.1,
                 attn_dropout: float = 0.1,
                 bidirectional: bool = True,
                 mask: str = 'dot',
                 joint_queries: bool = True,
                 zero_init_pixel_ffn: bool = True,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if mask not in MASK_READOUTS:
            raise OVSSConfigError(
                f'RelationDecoder mask={mask!r}; use one of {MASK_READOUTS} '
                "('dot': CLIP-RC Eq. 8, 'attention': ZegCLIP)")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) \
                or num_layers < 1:
            raise OVSSConfigError(
                f'RelationDecoder num_layers={num_layers!r} must be an int '
                '>= 1 (3 in ZegCLIP and CLIP-RC)')
        _check_heads(embed_dims, num_heads)
        self.embed_dims = embed_dims
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.bidirectional = bool(bidirectional)
        self.mask = mask
        self.joint_queries = bool(joint_queries)
        full = num_layers - 1 if mask == 'attention' else num_layers
        args = (embed_dims, num_heads, ffn_ratio, dropout, attn_dropout)
        self.query_layers = build_layers(full, *args)
        self.pixel_layers = build_layers(full, *args) \
            if self.bidirectional else None
        self.mask_logits = AttentionLogits(embed_dims, num_heads) \
            if mask == 'attention' else None
        init_linear_and_norm(self)
        if zero_init_pixel_ffn and self.pixel_layers is not None:
            for layer in self.pixel_layers:
                nn.init.zeros_(layer.ffn_out.weight)
                nn.init.zeros_(layer.ffn_out.bias)

    def arrange(self, per_query: Tensor, per_pixel: Tensor
                ) -> Tuple[Tensor, Tensor]:
        """(B, M, C, X) per-query and (B, N, Y) per-pixel tensors in the
        decoder's sequence layout: (B, M*C, X) and (B, N, Y) joint,
        (B*M, C, X) and (B*M, N, Y) per region."""
        b, m, c, x = per_query.shape
        if self.joint_queries or m == 1:
            return per_query.reshape(b, m * c, x), per_pixel
        return (per_query.reshape(b * m, c, x),
                per_pixel.repeat_interleave(m, dim=0))

    def forward(self, queries: Tensor, pixels: Tensor) -> DecoderOutput:
        """(B, M, C, D) queries and (B, N, D) pixels -> (B, C, N) maps."""
        b, m, c, _ = queries.shape
        q, p = self.arrange(queries, pixels)
        for i, query_layer in enumerate(self.query_layers):
            if self.bidirectional:
                q, p = bidirectional_step(query_layer, self.pixel_layers[i],
                                          q, p)
            else:
                q = query_layer(q, p)
        if self.mask_logits is not None:
            logits = self.mask_logits(q, p)
            q = None
            logits = logits.reshape(b, m, c, -1).mean(dim=1)
        elif p.shape[0] == b:
            # joint queries, one pixel sequence per image: Eq. 8's mean of
            # the M maps R_m I^T is (mean_m R_m) I^T, one (C x N) product
            # instead of the (B, M*C, N) maps
            logits = torch.matmul(q.reshape(b, m, c, -1).mean(dim=1),
                                  p.transpose(1, 2))
        else:
            logits = torch.matmul(q, p.transpose(1, 2))
            logits = logits.reshape(b, m, c, -1).mean(dim=1)
        return DecoderOutput(logits=logits, queries=q, pixels=p)
