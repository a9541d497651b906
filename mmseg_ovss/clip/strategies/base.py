"""Base classes and registry of the dense strategies.

A dense strategy replaces the last ``num_blocks`` blocks of CLIP's ViT when
computing the dense (patch) output; the rest of the ViT is untouched.
"""
from typing import Sequence, Tuple

import torch
from mmengine.registry import Registry
from torch import Tensor, nn

from mmseg_ovss.clip.attention import mlp_forward, project_out, project_qkv

DENSE_STRATEGIES = Registry('dense CLIP strategy')


class DenseStrategy(nn.Module):
    """Compute the dense token stream from the inputs of the last blocks.

    ``forward(blocks, inputs, grid_size, images)``: ``blocks`` are the last
    ``num_blocks`` ViT blocks, ``inputs[i]`` the (B, 1 + h*w, C) input of
    ``blocks[i]`` on the unmodified stream, ``grid_size`` the patch grid
    (h, w) and ``images`` the normalised windows (for strategies that look at
    pixels, e.g. ProxyCLIP). Returns ``(tokens, grid)``: (B, 1 + h'*w', C)
    tokens before ``ln_post`` (CLS first) and their patch grid (h', w'),
    usually ``grid_size`` itself.
    """
    num_blocks: int = 1

    def forward(self, blocks: Sequence[nn.Module], inputs: Sequence[Tensor],
                grid_size: Tuple[int, int], images: Tensor) -> Tensor:
        raise NotImplementedError


class LastBlockStrategy(DenseStrategy):
    """Replace the attention weights of the last block.

    y = A(ln_1(x)) with A = out_proj(W v) and W from :meth:`attention`;
    optionally y = x + y (``residual``) and y = y + FFN(ln_2(y)) (``ffn``).
    :meth:`attend` forms W v; strategies whose W is a softmax of scaled
    products override it with
    :func:`~mmseg_ovss.clip.attention.attention_values` (the fused
    ``F.scaled_dot_product_attention``, no (N, N) weights in memory; bf16
    on CPUs without AMX: explicit, a few windows at a time), and
    :meth:`attention` stays the explicit W (tests, analysis).
    """

    def __init__(self, residual: bool = False, ffn: bool = False):
        super().__init__()
        self.residual = residual
        self.ffn = ffn

    def attention(self, q: Tensor, k: Tensor,
                  grid_size: Tuple[int, int]) -> Tensor:
        """Token-to-token weights (B, heads, N, N)."""
        raise NotImplementedError

    def attend(self, q: Tensor, k: Tensor, v: Tensor,
               grid_size: Tuple[int, int], images: Tensor) -> Tensor:
        return torch.matmul(self.attention(q, k, grid_size), v)

    def forward(self, blocks, inputs, grid_size, images):
        block, x = blocks[-1], inputs[-1]
        q, k, v = project_qkv(block, block.ln_1(x))
        y = block.ls_1(project_out(block, self.attend(q, k, v, grid_size,
                                                      images)))
        if self.residual:
            y = x + y
        if self.ffn:
            y = y + block.ls_2(mlp_forward(block.mlp, block.ln_2(y)))
        return y, grid_size

    def extra_repr(self) -> str:
        return f'residual={self.residual}, ffn={self.ffn}'
