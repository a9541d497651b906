"""Crops of ambiguity purification: batched crop-and-resize, precision."""
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from mmseg_ovss.clip.precision import compute_dtype
from mmseg_ovss.utils.errors import OVSSConfigError

# FreeCPHead(crop_precision=...): 'model' (default) keeps the CLIP model's
# dtype; 'half' (a speed option that can flip near-tie crop winners) is fp16
# on CUDA and, on the CPU, bf16 where bf16 matmuls are faster than fp32 (the
# dense path's precision='auto' rule: AMX tiles, or a measured bf16 rate of
# at least AUTO_BF16_MIN_SPEEDUP x fp32, e.g. AMD EPYC with AVX512-BF16; not
# an Intel Xeon with AVX512-BF16 alone), the model's dtype elsewhere or when
# the model is already 16-bit.
CROP_PRECISIONS = {
    'model': None,
    'half': None,
    'fp32': torch.float32,
    'fp16': torch.float16,
    'bf16': torch.bfloat16,
}


def cpu_has_native_bf16() -> bool:
    """Whether bf16 crops are faster than fp32 on this CPU: the dense
    path's ``precision='auto'`` choice (:func:`compute_dtype`, measured once
    per process where there is no AMX)."""
    return compute_dtype('auto', 'cpu') == torch.bfloat16


def check_crop_precision(precision: str) -> str:
    """``precision`` if it is a key of :data:`CROP_PRECISIONS`, else a
    clear error (nothing is measured)."""
    if precision not in CROP_PRECISIONS:
        raise OVSSConfigError(
            f'crop_precision={precision!r} is not one of '
            f'{tuple(CROP_PRECISIONS)}')
    return precision


def crop_dtype(precision: str,
               device: Union[str, torch.device],
               model_dtype: Optional[torch.dtype] = None
               ) -> Optional[torch.dtype]:
    """The dtype crops are encoded in (None: the model's own).

    Args:
        precision: a key of :data:`CROP_PRECISIONS`.
        device: where the crops are encoded.
        model_dtype: the image tower's dtype, if known.
    """
    check_crop_precision(precision)
    if precision != 'half':
        return CROP_PRECISIONS[precision]
    if model_dtype in (torch.float16, torch.bfloat16):
        return None
    device_type = torch.device(device).type
    if device_type == 'cuda':
        return torch.float16
    if device_type == 'cpu' and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def crop_and_resize(images: Tensor, image_index: Tensor, boxes: Tensor,
                    size: int) -> Tensor:
    """Crop every box and resize it to ``size`` x ``size`` in one call.

    Equals ``F.interpolate(images[i:i+1, :, y0:y1, x0:x1], (size, size),
    mode='bilinear', align_corners=False)`` per box (the authors' crop),
    computed with one ``grid_sample`` on source coordinates
    ``clamp(scale * (d + 0.5) - 0.5, 0, extent - 1)`` inside each box.

    Args:
        images: (B, C, H, W).
        image_index: (n, ) the image of each box.
        boxes: (n, 4) pixel boxes ``(x0, y0, x1, y1)``, exclusive ends,
            non-empty.
        size: output side.
    Returns:
        (n, C, size, size) crops.
    """
    _, _, height, width = images.shape
    boxes = boxes.to(images.device, torch.float32)
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    steps = torch.arange(size, device=images.device, dtype=torch.float32)
    steps = steps + 0.5

    def coords(start: Tensor, end: Tensor, extent: int) -> Tensor:
        span = (end - start)[:, None]
        src = (steps[None] * span / size - 0.5).clamp(min=0)
        src = torch.minimum(src, span - 1) + start[:, None]
        return src / max(extent - 1, 1) * 2 - 1

    gx = coords(x0, x1, width)
    gy = coords(y0, y1, height)
    grid = torch.stack([
        gx[:, None, :].expand(-1, size, -1),
        gy[:, :, None].expand(-1, -1, size)
    ], dim=-1)
    return F.grid_sample(images[image_index].float(), grid, mode='bilinear',
                         padding_mode='border', align_corners=True)
