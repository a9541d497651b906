"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020, §3.2).

For every pixel i and its 8 neighbours j at each dilation d:
a_ij = -|I_i - I_j| / (0.1 * sigma_i), averaged over colour channels, where
sigma_i is the standard deviation of the 3x3 (dilated) neighbourhoods of i
over all dilations; the affinities are softmax-normalised over all
neighbours, and the mask is propagated ``num_iter`` times:
m_i <- sum_j softmax(a)_ij m_j (replicate padding at the border).
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmseg_ovss.utils.errors import OVSSConfigError


def _neighbour_offsets(dilation: int, with_centre: bool) -> List[tuple]:
    return [(dy * dilation, dx * dilation) for dy in (-1, 0, 1)
            for dx in (-1, 0, 1) if with_centre or (dy, dx) != (0, 0)]


def gather_neighbours(x: Tensor, dilations: Sequence[int],
                      with_centre: bool = False) -> Tensor:
    """(B, C, H, W) -> (B, C, K, H, W) shifted copies, replicate padding."""
    pad = max(dilations)
    padded = F.pad(x, (pad, pad, pad, pad), mode='replicate')
    h, w = x.shape[-2:]
    shifts = []
    for d in dilations:
        for dy, dx in _neighbour_offsets(d, with_centre):
            shifts.append(padded[..., pad + dy:pad + dy + h,
                                 pad + dx:pad + dx + w])
    return torch.stack(shifts, dim=2)


def propagate(masks: Tensor, aff: Tensor, dilations: Sequence[int]) -> Tensor:
    """One step m_i <- sum_j a_ij m_j without stacking the K neighbours."""
    pad = max(dilations)
    padded = F.pad(masks, (pad, pad, pad, pad), mode='replicate')
    h, w = masks.shape[-2:]
    out = torch.zeros_like(masks)
    k = 0
    for d in dilations:
        for dy, dx in _neighbour_offsets(d, with_centre=False):
            out.addcmul_(aff[:, :, k], padded[..., pad + dy:pad + dy + h,
                                              pad + dx:pad + dx + w])
            k += 1
    return out


def pamr_affinity(image: Tensor, dilations: Sequence[int]) -> Tensor:
    """(B, 1, K, H, W) normalised affinities of each pixel to K neighbours."""
    sigma = gather_neighbours(image, dilations, with_centre=True).std(
        dim=2, keepdim=True)
    diff = image.unsqueeze(2) - gather_neighbours(image, dilations)
    aff = -diff.abs() / (1e-8 + 0.1 * sigma)
    return aff.mean(dim=1, keepdim=True).softmax(dim=2)


class PAMR(nn.Module):
    """Refine masks (B, K, H, W) with an image (B, 3, H, W) of the same size.

    Args:
        num_iter (int): propagation steps (10 in NACLIP).
        dilations (Sequence[int]): neighbourhood dilations ((8, 16) in NACLIP).
        channels_per_step (int): mask channels propagated together (bounds
            the memory of the (B, C, K, H, W) neighbour stack).
    """

    def __init__(self, num_iter: int = 10, dilations: Sequence[int] = (8, 16),
                 channels_per_step: int = 64):
        super().__init__()
        if num_iter < 1 or not dilations or min(dilations) < 1:
            raise OVSSConfigError(
                'PAMR needs num_iter >= 1 and positive dilations, got '
                f'{num_iter} and {dilations}')
        self.num_iter = int(num_iter)
        self.dilations = tuple(int(d) for d in dilations)
        self.channels_per_step = max(1, int(channels_per_step))

    @torch.no_grad()
    def forward(self, image: Tensor, masks: Tensor) -> Tensor:
        if image.shape[-2:] != masks.shape[-2:]:
            image = F.interpolate(image, size=masks.shape[-2:],
                                  mode='bilinear', align_corners=False)
        aff = pamr_affinity(image.float(), self.dilations)
        chunks = []
        for chunk in masks.float().split(self.channels_per_step, dim=1):
            for _ in range(self.num_iter):
                chunk = propagate(chunk, aff, self.dilations)
            chunks.append(chunk)
        return torch.cat(chunks, dim=1)

    def extra_repr(self) -> str:
        return f'num_iter={self.num_iter}, dilations={self.dilations}'
