"""PnP-OVSS post-processing (§3.3): normalise, threshold, blur, background.

Order (paper Fig. 4, authors' code): per-class min-max of the summed salience,
threshold at T, bilinear resize to the image, "all classes off" background
channel, Gaussian blur with sigma = ``sigma_ratio`` x the image's longer side
(each channel min-max normalised again after the blur, as the authors did),
then DenseCRF on the softmax over channels (``mmseg_ovss.utils.crf``).

Threshold modes: ``'binary'`` (the paper: "obtain binary segmentation
masks") keeps 1 where the normalised map >= T; ``'masked'`` (the authors'
code) keeps the raw summed salience there.
"""
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from mmseg_ovss.utils.errors import OVSSConfigError

THRESHOLD_MODES = ('binary', 'masked')


def minmax_per_class(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """Scale each map of (K, ...) to [0, 1]; a constant map becomes 0."""
    flat = maps.flatten(1)
    low = flat.min(1, keepdim=True).values
    high = flat.max(1, keepdim=True).values
    scaled = (flat - low) / (high - low).clamp(min=eps)
    return scaled.reshape(maps.shape)


def threshold_maps(maps: Tensor, threshold: float, mode: str = 'binary'
                   ) -> Tensor:
    """Threshold (K, h, w) salience at ``threshold`` of its per-class range."""
    if mode not in THRESHOLD_MODES:
        raise OVSSConfigError(
            f'unknown threshold mode "{mode}"; use one of {THRESHOLD_MODES}.')
    on = minmax_per_class(maps) >= threshold
    if mode == 'binary':
        return on.to(maps.dtype)
    return maps * on


def resize_maps(maps: Tensor, size) -> Tensor:
    """Bilinear (align_corners=True, as the authors) resize of (K, h, w)."""
    return F.interpolate(maps[None], size=tuple(size), mode='bilinear',
                         align_corners=True)[0]


def add_background(maps: Tensor) -> Tensor:
    """Prepend the "all classes off" channel: 1 where every class map is 0."""
    background = (maps.max(0, keepdim=True).values <= 0).to(maps.dtype)
    return torch.cat([background, maps], dim=0)


def gaussian_blur(maps: np.ndarray, sigma_ratio: float) -> np.ndarray:
    """Blur each channel of (C, H, W) with sigma = ratio x max(H, W) pixels.

    Each channel is min-max normalised afterwards (authors' ``blurring``).
    A constant channel (blurring leaves it constant; min-max is undefined)
    keeps its value: the background channel of an image where no class is on
    stays 1, a class on everywhere is not turned off.
    """
    sigma = sigma_ratio * max(maps.shape[1:])
    maps = maps.astype(np.float32, copy=False)
    flat = maps.reshape(maps.shape[0], -1)
    constant = flat.max(1) == flat.min(1)
    blurred = ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma))
    out = minmax_per_class(torch.from_numpy(blurred)).numpy()
    out[constant] = maps[constant]
    return out
