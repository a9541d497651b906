"""GEM (Bousselham et al., CVPR 2024): grounding everything module.

A parallel path over the last ``num_blocks`` blocks. In each block, from the
unmodified stream's normalised input h = ln_1(x): for z in {q, k, v},
L2-normalise, refine ``iterations`` times z <- softmax(z z^T t) z (re-normalised
each time), then W_z = softmax(z z^T t) with the adaptive temperature
t = mean_token ||h|| / sqrt(d). The block adds out_proj(mean_z W_z v) to the
GEM path (residual kept, no FFN); the path starts from the input of the first
replaced block.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mmseg_ovss.clip.attention import project_out, project_qkv
from mmseg_ovss.utils.errors import OVSSConfigError

from .base import DENSE_STRATEGIES, DenseStrategy


def self_self_attention(z: Tensor, inv_temp: Tensor, iterations: int) -> Tensor:
    """softmax(z' z'^T t) after ``iterations`` refinements of normalised z."""
    for _ in range(iterations):
        z = F.normalize(z, dim=-1)
        z = torch.matmul((torch.matmul(z, z.transpose(-2, -1)) *
                          inv_temp).softmax(-1), z)
    z = F.normalize(z, dim=-1)
    return (torch.matmul(z, z.transpose(-2, -1)) * inv_temp).softmax(-1)


@DENSE_STRATEGIES.register_module(name=['GEM', 'GEMStrategy'])
class GEMStrategy(DenseStrategy):
    """Self-self attention path over the last blocks (6 by default).

    Args:
        num_blocks (int): blocks in the GEM path.
        iterations (int): extra self-self refinement steps (1).
        temperature (float, optional): fixed inverse temperature instead of
            the adaptive one.
    """

    def __init__(self, num_blocks: int = 6, iterations: int = 1,
                 temperature: Optional[float] = None):
        super().__init__()
        if num_blocks < 1 or iterations < 0:
            raise OVSSConfigError(
                'GEM needs num_blocks >= 1 and iterations >= 0, got '
                f'{num_blocks} and {iterations}')
        self.num_blocks = int(num_blocks)
        self.iterations = int(iterations)
        self.temperature = temperature

    def forward(self, blocks, inputs, grid_size, images):
        path = inputs[0]
        for block, x in zip(blocks, inputs):
            h = block.ln_1(x)
            q, k, v = project_qkv(block, h)
            if self.temperature is None:
                inv_temp = (h.norm(dim=-1).mean(dim=-1) *
                            q.shape[-1] ** -0.5).view(-1, 1, 1, 1)
            else:
                inv_temp = torch.as_tensor(self.temperature, dtype=h.dtype)
            out = sum(
                torch.matmul(self_self_attention(z, inv_temp,
                                                 self.iterations), v)
                for z in (v, k, q)) / 3
            path = path + block.ls_1(project_out(block, out))
        return path, grid_size
