"""Class aggregation of the cost volume: attention across the classes at
each position, with text guidance (CAT-Seg Sec. 3.3, Eq. 4;
``KU-CVLAB/CAT-Seg`` ``cat_seg/modeling/transformer/model.py``,
``LinearAttention``, ``AttentionLayer``, ``ClassTransformerLayer``).

At every (pooled) position the K class tokens of the cost feature attend to
each other; queries and keys also see the projected text embedding of their
class, ``Q = W_q [x; t]``, ``K = W_k [x; t]``, ``V = W_v x``. The attention
is linear (Katharopoulos et al., 2020, Eq. 5 with ``phi = elu + 1``), which
keeps the cost linear in K, so any vocabulary size runs.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.utils.errors import OVSSConfigError

ATTENTION_TYPES = ('linear', 'full')


def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1 (positive)."""
    return F.elu(x) + 1


def linear_attention(q: Tensor, k: Tensor, v: Tensor,
                     eps: float = 1e-6) -> Tensor:
    """Linear attention of (N, L, heads, d) q and (N, S, heads, d) k, v:
    ``out_l = sum_s phi(q_l).phi(k_s) v_s / (sum_s phi(q_l).phi(k_s) +
    eps)`` (Katharopoulos et al., 2020, Eq. 6), computed through the
    (heads, d, d) summary ``sum_s phi(k_s) v_s^T``. The values are divided
    by S before the sums and the result multiplied back, as in CAT-Seg's
    ``LinearAttention`` (no fp16 overflow)."""
    q, k = elu_feature_map(q), elu_feature_map(k)
    length = v.shape[1]
    kv = torch.einsum('nshd,nshv->nhdv', k, v / length)
    norm = 1.0 / (torch.einsum('nlhd,nhd->nlh', q, k.sum(dim=1)) + eps)
    return torch.einsum('nlhd,nhdv,nlh->nlhv', q, kv, norm) * length


def full_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) v on (N, L, heads, d) tensors (CAT-Seg's
    ``FullAttention``)."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _pair(value, what: str) -> Tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) and v >= 1
                                  for v in value):
        raise OVSSConfigError(
            f'{what}={value!r} must be a positive int or a pair of them')
    return value


@MODELS.register_module()
class ClassAggregation(nn.Module):
    """One pre-norm transformer layer across classes (CAT-Seg
    ``ClassTransformerLayer``).

    The cost map is average-pooled (``pool_size`` in training,
    ``test_pool_size`` at inference: CAT-Seg trains with 2x2 and its
    ``eval.sh`` tests with 1x1), the class tokens at each pooled position
    go through guided attention and an MLP (ReLU, 4x), the result is
    resized back (bilinear, ``align_corners=True``) and added to the input.

    Args:
        embed_dims (int): cost-feature width d.
        guidance_dims (int): text-guidance width (0: none).
        num_heads (int): heads (4).
        attention (str): ``'linear'`` (CAT-Seg) or ``'full'``.
        pool_size, test_pool_size (int | tuple): pooling windows.
        pad_len (int): CAT-Seg pads the class sequence with a learnable
            token (and a learnable guidance) up to ``pad_len`` classes; 0
            turns it off. The head truncates longer vocabularies to
            ``pad_len`` (see ``CATSegHead``).
        pooled_residual (bool): True (CAT-Seg's code): the resized branch
            is the whole pooled layer output, pooled input included, so the
            layer returns ``x + up(pool(x) + attention + MLP)``; False: only
            the attention and MLP updates are resized and added.
        mlp_ratio (int): MLP width / d.
        eps (float): linear-attention denominator guard.
    """

    def __init__(self, embed_dims: int, guidance_dims: int,
                 num_heads: int = 4, attention: str = 'linear',
                 pool_size=(2, 2), test_pool_size=(1, 1), pad_len: int = 256,
                 pooled_residual: bool = True, mlp_ratio: int = 4,
                 eps: float = 1e-6):
        super().__init__()
        if attention not in ATTENTION_TYPES:
            raise OVSSConfigError(
                f'class attention {attention!r}; use one of '
                f'{ATTENTION_TYPES}')
        if embed_dims % num_heads:
            raise OVSSConfigError(
                f'embed_dims={embed_dims} is not divisible by '
                f'num_heads={num_heads}')
        if pad_len < 0:
            raise OVSSConfigError(f'pad_len={pad_len} must be >= 0')
        self.embed_dims = embed_dims
        self.guidance_dims = guidance_dims
        self.num_heads = num_heads
        self.attention = attention
        self.pool_size = _pair(pool_size, 'pool_size')
        self.test_pool_size = _pair(test_pool_size, 'test_pool_size')
        self.pad_len = int(pad_len)
        self.pooled_residual = bool(pooled_residual)
        self.eps = float(eps)
        self.q = nn.Linear(embed_dims + guidance_dims, embed_dims)
        self.k = nn.Linear(embed_dims + guidance_dims, embed_dims)
        self.v = nn.Linear(embed_dims, embed_dims)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dims, embed_dims * mlp_ratio), nn.ReLU(),
            nn.Linear(embed_dims * mlp_ratio, embed_dims))
        self.norm1 = nn.LayerNorm(embed_dims)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, embed_dims)) \
            if pad_len > 0 else None
        self.padding_guidance = nn.Parameter(
            torch.zeros(1, 1, guidance_dims)) \
            if pad_len > 0 and guidance_dims > 0 else None

    def project(self, linear: nn.Linear, x: Tensor,
                guidance: Optional[Tensor]) -> Tensor:
        """``linear([x; t])`` for (B, P, K, d) tokens and (B, K, G) text
        guidance broadcast over the P positions."""
        if guidance is None:
            if self.guidance_dims:
                raise OVSSConfigError(
                    f'ClassAggregation was built for {self.guidance_dims} '
                    'text-guidance channels but got no guidance')
            return linear(x)
        d = x.shape[-1]
        own = F.linear(x, linear.weight[:, :d], linear.bias)
        return own + F.linear(guidance.to(x.dtype),
                              linear.weight[:, d:]).unsqueeze(1)

    def attend(self, tokens: Tensor, guidance: Optional[Tensor]) -> Tensor:
        """Guided attention across classes of (B, P, K, d) tokens."""
        b, p, k, d = tokens.shape
        heads = self.num_heads
        q = self.project(self.q, tokens, guidance)
        kk = self.project(self.k, tokens, guidance)
        v = self.v(tokens)
        q, kk, v = (t.reshape(b * p, k, heads, d // heads)
                    for t in (q, kk, v))
        if self.attention == 'linear':
            out = linear_attention(q, kk, v, self.eps)
        else:
            out = full_attention(q, kk, v)
        return out.reshape(b, p, k, d)

    def pad_classes(self, tokens: Tensor, guidance: Optional[Tensor]):
        """Append learnable padding classes up to ``pad_len``."""
        b, p, k, d = tokens.shape
        missing = self.pad_len - k
        if self.padding_tokens is None or missing <= 0:
            return tokens, guidance
        pad = self.padding_tokens.to(tokens.dtype).expand(b, p, missing, d)
        tokens = torch.cat([tokens, pad], dim=2)
        if guidance is not None and self.padding_guidance is not None:
            pad = self.padding_guidance.to(guidance.dtype).expand(
                b, missing, guidance.shape[-1])
            guidance = torch.cat([guidance, pad], dim=1)
        return tokens, guidance

    def forward(self, x: Tensor, guidance: Optional[Tensor]) -> Tensor:
        """(B, K, h, w, d) channel-last cost features and (B, K, G) text
        guidance (or None) -> (B, K, h, w, d)."""
        b, k, h, w, d = x.shape
        if guidance is not None and guidance.shape[:2] != (b, k):
            raise OVSSConfigError(
                f'text guidance {tuple(guidance.shape)} does not match '
                f'{b} images x {k} classes')
        pool = self.pool_size if self.training else self.test_pool_size
        pooled = x
        if pool != (1, 1):
            pooled = F.avg_pool2d(x.reshape(b * k, h, w, d).permute(
                0, 3, 1, 2), pool)
            pooled = pooled.permute(0, 2, 3, 1).reshape(
                b, k, *pooled.shape[-2:], d)
        hp, wp = pooled.shape[2:4]
        tokens = pooled.permute(0, 2, 3, 1, 4).reshape(b, hp * wp, k, d)
        padded, padded_guidance = self.pad_classes(tokens, guidance)
        out = padded + self.attend(self.norm1(padded), padded_guidance)
        out = out + self.mlp(self.norm2(out))
        out = out[:, :, :k]
        if not self.pooled_residual:
            out = out - tokens
        out = out.view(b, hp, wp, k, d).permute(0, 3, 1, 2, 4)
        if (hp, wp) != (h, w):
            out = F.interpolate(
                out.reshape(b * k, hp, wp, d).permute(0, 3, 1, 2),
                size=(h, w), mode='bilinear', align_corners=True)
            out = out.permute(0, 2, 3, 1).reshape(b, k, h, w, d)
        return x + out
