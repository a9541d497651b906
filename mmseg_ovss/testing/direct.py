"""Direct computations that equivalence tests compare the package against.

Each function writes a step of CLIP's attention out by hand from a block's
weights (open_clip ``ResidualAttentionBlock`` with ``nn.MultiheadAttention``),
so a strategy can be checked against its paper's formula on the same
weights; :func:`assert_fp32_close` bounds the difference by fp32 rounding.
"""
import torch
from torch import Tensor

EPS32 = torch.finfo(torch.float32).eps


def assert_fp32_close(actual: Tensor, expected: Tensor, terms: int) -> None:
    """The same formula in another operation order (or another kernel,
    batch size, CPU): fp32 rounding of order ``terms`` * eps * max|value|,
    with ``terms`` the summed lengths of the chained reductions; never a
    tolerance tuned on one machine."""
    tol = terms * EPS32 * expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=tol)


def attention_heads(block, x: Tensor):
    """q, k, v (B, heads, N, d) of the normalised tokens ``x`` (B, N, C),
    from the block's ``in_proj`` weights."""
    c = x.shape[-1]
    num_heads = block.attn.num_heads
    w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
    out = []
    for i in range(3):
        y = x @ w[i * c:(i + 1) * c].T + b[i * c:(i + 1) * c]
        out.append(y.view(*y.shape[:2], num_heads, -1).permute(0, 2, 1, 3))
    return out


def merge_heads(block, y: Tensor) -> Tensor:
    """(B, heads, N, d) per-head outputs through the block's ``out_proj``."""
    b, h, n, d = y.shape
    y = y.permute(0, 2, 1, 3).reshape(b, n, h * d)
    return y @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
