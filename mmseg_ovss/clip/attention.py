"""Multi-head attention pieces of an open_clip ``ResidualAttentionBlock``.

The dense strategies re-use the block's own projections (``attn.in_proj_*``
and ``attn.out_proj`` of ``nn.MultiheadAttention``) and change only how the
token-to-token weights are formed.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmseg_ovss.utils.errors import OVSSConfigError


def _multihead(block: nn.Module) -> nn.MultiheadAttention:
    attn = getattr(block, 'attn', None)
    if not isinstance(attn, nn.MultiheadAttention):
        raise OVSSConfigError(
            f'dense CLIP strategies need open_clip ViT blocks with '
            f'nn.MultiheadAttention, got {type(attn).__name__}; use a standard '
            'CLIP ViT (e.g. ViT-B-16) rather than a custom-attention variant')
    return attn


def project_qkv(block: nn.Module, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """q, k, v of normalised tokens x (B, N, C), each (B, heads, N, d)."""
    attn = _multihead(block)
    b, n, c = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def project_out(block: nn.Module, x: Tensor) -> Tensor:
    """Merge heads (B, heads, N, d) -> (B, N, C) and apply ``out_proj``."""
    attn = _multihead(block)
    b, h, n, d = x.shape
    return attn.out_proj(x.transpose(1, 2).reshape(b, n, h * d))


def scaled_similarity(a: Tensor, b: Tensor) -> Tensor:
    """a b^T / sqrt(d) for (B, heads, N, d) tensors."""
    return torch.matmul(a, b.transpose(-2, -1)) * a.shape[-1] ** -0.5


def vanilla_attention(q: Tensor, k: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) (Vaswani et al., Eq. 1)."""
    return scaled_similarity(q, k).softmax(dim=-1)


def block_forward_with_attention(block: nn.Module,
                                 x: Tensor) -> Tuple[Tensor, Tensor]:
    """Run an unmodified block and return its output and attention weights.

    Same result as ``block(x)``; also returns softmax(q k^T / sqrt(d)) of
    shape (B, heads, N, N).
    """
    q, k, v = project_qkv(block, block.ln_1(x))
    weights = vanilla_attention(q, k)
    x = x + block.ls_1(project_out(block, torch.matmul(weights, v)))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, weights
