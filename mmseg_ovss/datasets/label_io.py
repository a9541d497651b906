"""Reading label maps and images with errors that name the file and the fix.

Label maps of the benchmarks are single-channel PNG (palette or grey, 8 bit)
or 16-bit TIFF / PNG (PASCAL Context 459, ADE20K-847). They are decoded with
Pillow, which keeps palette indices (VOC) and 16-bit values as they are.
"""
import io
import os.path as osp
from typing import Optional

import cv2
import mmengine.fileio as fileio
import numpy as np
from PIL import Image, UnidentifiedImageError

from mmseg_ovss.utils.errors import OVSSDataError

# Pillow modes that hold one label id per pixel, and their numpy dtypes.
_LABEL_MODES = ('P', 'L', 'I;16', 'I;16B', 'I;16L', 'I')


def read_label_map(path: str,
                   backend_args: Optional[dict] = None) -> np.ndarray:
    """Decode a label map as an (H, W) integer array, keeping its bit depth."""
    try:
        data = fileio.get(path, backend_args=backend_args)
    except FileNotFoundError as err:
        raise OVSSDataError(
            f'annotation file {path} does not exist; regenerate the dataset '
            'annotations (see docs/datasets.md) or fix data_root') from err
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
            if mode not in _LABEL_MODES:
                raise OVSSDataError(
                    f'annotation file {path} is a {mode} image, not a '
                    'single-channel label map; point the dataset at the label '
                    'id variant (e.g. Cityscapes *_gtFine_labelTrainIds.png, '
                    'COCO-Stuff *_labelTrainIds.png), not a colour rendering')
            label = np.array(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, OVSSDataError):
            raise
        raise OVSSDataError(
            f'annotation file {path} cannot be decoded ({err}); the file is '
            'corrupt or not an image: re-extract or regenerate it') from err
    if label.ndim != 2:
        raise OVSSDataError(
            f'annotation file {path} has shape {label.shape}; expected a '
            'single-channel (H, W) label map')
    return label


def describe_unreadable_image(path: str) -> Optional[str]:
    """Why ``path`` cannot serve as an input image, or None if it decodes.

    Only called after a pipeline failed, so the extra decode costs nothing on
    the normal path.
    """
    if not osp.isfile(path):
        return 'does not exist'
    buffer = np.fromfile(path, dtype=np.uint8)
    if buffer.size == 0:
        return 'is empty'
    if cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) is None:
        return 'cannot be decoded (corrupt or not an image)'
    return None
