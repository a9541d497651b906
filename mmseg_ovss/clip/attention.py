"""Multi-head attention pieces of an open_clip ``ResidualAttentionBlock``.

The dense strategies re-use the block's own projections (``attn.in_proj_*``
and ``attn.out_proj`` of ``nn.MultiheadAttention``) and change only how the
token-to-token weights are formed.
"""
from typing import Callable, Optional, Tuple

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


# On the CPU, attention scores are formed for a few windows at a time so
# that each (heads, N, N) block stays in cache: about 3x faster than one
# batched softmax(q k^T) over B windows of 577 tokens (same numbers).
CPU_SCORE_ELEMENTS = 1 << 22


def scaled_similarity(a: Tensor, b: Tensor) -> Tensor:
    """a b^T / sqrt(d) for (B, heads, N, d) tensors (a scaled first: d
    times fewer multiplications than scaling the product)."""
    return torch.matmul(a * a.shape[-1] ** -0.5, b.transpose(-2, -1))


def vanilla_attention(q: Tensor, k: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) (Vaswani et al., Eq. 1)."""
    return scaled_similarity(q, k).softmax(dim=-1)


def score_batch_size(q: Tensor) -> int:
    """Windows per attention-score block for (B, heads, N, d) queries:
    all of them off the CPU, else as many as fit CPU_SCORE_ELEMENTS."""
    b, heads, n, _ = q.shape
    if q.device.type != 'cpu':
        return b
    return max(1, CPU_SCORE_ELEMENTS // (heads * n * n))


def block_forward_with_attention(
        block: nn.Module,
        x: Tensor,
        reduce_heads: Optional[Callable[[Tensor], Tensor]] = None
) -> Tuple[Tensor, Tensor]:
    """Run an unmodified block and return its output and attention weights.

    Same result as ``block(x)``; also returns softmax(q k^T / sqrt(d)) of
    shape (B, heads, N, N), or ``reduce_heads`` of it (applied per block of
    windows, see :func:`score_batch_size`).
    """
    q, k, v = project_qkv(block, block.ln_1(x))
    step = score_batch_size(q)
    outputs, captured = [], []
    for start in range(0, q.shape[0], step):
        window = slice(start, start + step)
        weights = vanilla_attention(q[window], k[window])
        outputs.append(torch.matmul(weights, v[window]))
        captured.append(weights if reduce_heads is None
                        else reduce_heads(weights))
    if len(outputs) > 1:
        outputs, captured = [torch.cat(outputs)], [torch.cat(captured)]
    x = x + block.ls_1(project_out(block, outputs[0]))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, captured[0]


def cls_block_forward(block: nn.Module, x: Tensor) -> Tensor:
    """``block(x)[:, :1]`` computed for the CLS query only.

    The CLS output of a block reads every token through attention, but no
    other token's output; the last block of a CLS-only forward therefore
    needs one query row and one MLP row instead of N (exact).
    """
    attn = _multihead(block)
    normed = block.ln_1(x)
    b, n, c = normed.shape
    heads = attn.num_heads
    bias = attn.in_proj_bias
    q = F.linear(normed[:, :1], attn.in_proj_weight[:c],
                 None if bias is None else bias[:c])
    kv = F.linear(normed, attn.in_proj_weight[c:],
                  None if bias is None else bias[c:])
    q = q.view(b, 1, heads, c // heads).transpose(1, 2)
    k, v = kv.view(b, n, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    cls = x[:, :1] + block.ls_1(project_out(block, out))
    return cls + block.ls_2(block.mlp(block.ln_2(cls)))
