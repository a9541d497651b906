"""GEM (Bousselham et al., CVPR 2024): grounding everything module.

A parallel self-self attention path over the last ``num_blocks`` blocks.
In each block, from the unmodified stream's normalised input h = ln_1(x):
for z in {q, k, v}, L2-normalise, refine ``iterations`` times
z <- softmax(z z^T t) z (re-normalised each time), then
W_z = softmax(z z^T t) with the adaptive temperature
t = mean_token ||h|| / sqrt(d). The block's GEM output is
a = out_proj(mean_z W_z v).

``residual=True`` (the paper and ``WalBouss/GEM``, ``gem/gem_utils.py``,
``GEMResidualBlock``): the path adds a to its running sum, which starts from
the input of the first replaced block; no FFN.

``residual=False`` (how the ClearCLIP repository runs GEM,
``mc-lan/ClearCLIP``, ``gem/gem_utils.py`` with ``ignore_residual=True``):
each replaced block overwrites the path with its own a, so the output is the
last block's a alone; the earlier replaced blocks do not contribute.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mmseg_ovss.clip.attention import project_out, project_qkv
from mmseg_ovss.utils.errors import OVSSConfigError

from .base import DENSE_STRATEGIES, DenseStrategy


def self_self_attention(z: Tensor, inv_temp: Tensor,
                        iterations: int) -> Tensor:
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
        residual (bool): sum the blocks' outputs on the path (paper, official
            code; default) or keep only the last block's output (the
            ClearCLIP repository's ``ignore_residual=True``).
    """

    def __init__(self, num_blocks: int = 6, iterations: int = 1,
                 temperature: Optional[float] = None, residual: bool = True):
        super().__init__()
        if num_blocks < 1 or iterations < 0:
            raise OVSSConfigError(
                'GEM needs num_blocks >= 1 and iterations >= 0, got '
                f'{num_blocks} and {iterations}')
        if temperature is not None and not float(temperature) > 0:
            raise OVSSConfigError(
                f'GEM temperature (a fixed inverse temperature) must be > 0, '
                f'got {temperature}; use None for the adaptive one')
        if not isinstance(residual, bool):
            raise OVSSConfigError(
                f'GEM residual must be True or False, got {residual!r}')
        self.num_blocks = int(num_blocks)
        self.iterations = int(iterations)
        self.temperature = None if temperature is None else float(temperature)
        self.residual = residual

    def block_output(self, block, x: Tensor) -> Tensor:
        """ls_1(out_proj(mean_z W_z v)) of one block on its input x."""
        h = block.ln_1(x)
        q, k, v = project_qkv(block, h)
        if self.temperature is None:
            inv_temp = (h.norm(dim=-1).mean(dim=-1) *
                        q.shape[-1] ** -0.5).view(-1, 1, 1, 1)
        else:
            inv_temp = torch.as_tensor(self.temperature, dtype=h.dtype)
        out = sum(
            torch.matmul(self_self_attention(z, inv_temp, self.iterations), v)
            for z in (v, k, q)) / 3
        return block.ls_1(project_out(block, out))

    def forward(self, blocks, inputs, grid_size, images):
        if not self.residual:
            # every replaced block overwrites the path: only the last counts
            return self.block_output(blocks[-1], inputs[-1]), grid_size
        path = inputs[0]
        for block, x in zip(blocks, inputs):
            path = path + self.block_output(block, x)
        return path, grid_size

    def extra_repr(self) -> str:
        return (f'num_blocks={self.num_blocks}, iterations={self.iterations}, '
                f'temperature={self.temperature}, residual={self.residual}')
