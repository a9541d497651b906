"""NACLIP (Hajimiri et al., WACV 2025): neighbourhood-aware k-k attention.

W = softmax(k k^T / sqrt(d) + omega) with omega_ij = exp(-||p_i - p_j||^2 /
(2 sigma^2)) for patches at grid positions p_i, p_j and 0 on the CLS row and
column (NACLIP Eq. 6-8). No residual, no FFN ("reduced" architecture).
"""
from typing import Tuple

import torch
from torch import Tensor

from mmseg_ovss.clip.attention import attention_values, scaled_similarity
from mmseg_ovss.utils.errors import OVSSConfigError

from .base import DENSE_STRATEGIES, LastBlockStrategy


def gaussian_neighbourhood_bias(grid_size: Tuple[int, int], sigma: float,
                                device=None, dtype=torch.float32) -> Tensor:
    """omega of shape (1 + h*w, 1 + h*w), zero on the CLS row and column."""
    h, w = grid_size
    rows, cols = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32), indexing='ij')
    pos = torch.stack([rows.flatten(), cols.flatten()], dim=1)
    dist2 = torch.cdist(pos, pos).pow(2)
    bias = torch.zeros(h * w + 1, h * w + 1, device=device)
    bias[1:, 1:] = torch.exp(-dist2 / (2 * sigma ** 2))
    return bias.to(dtype)


@DENSE_STRATEGIES.register_module(name=['NACLIP', 'NACLIPStrategy'])
class NACLIPStrategy(LastBlockStrategy):
    """Neighbourhood attention; ``sigma`` in patches (5 in the paper)."""

    def __init__(self, sigma: float = 5.0, residual: bool = False,
                 ffn: bool = False):
        super().__init__(residual=residual, ffn=ffn)
        if sigma <= 0:
            raise OVSSConfigError(f'NACLIP sigma must be > 0, got {sigma}')
        self.sigma = float(sigma)
        self._bias_cache = {}

    def bias(self, grid_size, device, dtype) -> Tensor:
        key = (tuple(grid_size), str(device), dtype)
        if key not in self._bias_cache:
            self._bias_cache[key] = gaussian_neighbourhood_bias(
                grid_size, self.sigma, device, dtype)
        return self._bias_cache[key]

    def attention(self, q, k, grid_size):
        logits = scaled_similarity(k, k)
        return (logits + self.bias(grid_size, k.device, k.dtype)).softmax(-1)

    def attend(self, q, k, v, grid_size, images):
        """W v as one attention (:func:`attention_values`) of k over k
        with omega as an additive mask."""
        return attention_values(
            k, k, v, attn_mask=self.bias(grid_size, k.device, k.dtype))
