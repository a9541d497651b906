"""Batched crop-and-resize of boxes from a batch of images."""
import torch
import torch.nn.functional as F
from torch import Tensor


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
