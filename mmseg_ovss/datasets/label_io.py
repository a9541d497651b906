"""Reading label maps and images with errors that name the file and the fix.

Label maps of the benchmarks are single-channel PNG (palette or grey, 8 bit)
or 16-bit TIFF / PNG (PASCAL Context 459, ADE20K-847). They are decoded with
Pillow, which keeps palette indices (VOC) and 16-bit values as they are.
"""
import io
import os.path as osp
from typing import Optional, Tuple

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


#: EXIF orientation tag values (TIFF 6.0 / EXIF 2.3, tag 0x0112) and what a
#: viewer does to show the stored pixels upright.
EXIF_ORIENTATIONS = {
    2: 'mirrored left-right', 3: 'rotated 180 degrees',
    4: 'mirrored top-bottom', 5: 'transposed', 6: 'rotated 90 degrees',
    7: 'transversed', 8: 'rotated 270 degrees'}
#: Orientations that swap width and height.
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def exif_orientation(path: str) -> Optional[int]:
    """The EXIF orientation tag of an image file (2..8), or None when the file
    has none, is upright (1) or cannot be parsed. Reads the header only."""
    try:
        with Image.open(path) as image:
            value = image.getexif().get(0x0112)
    except (OSError, SyntaxError, ValueError):
        return None
    return int(value) if value in EXIF_ORIENTATIONS else None


def describe_size_mismatch(img_path: str, img_shape: Tuple[int, int],
                           seg_path: str, seg_shape: Tuple[int, int]) -> str:
    """Error text for an image and its label map of different sizes."""
    (img_h, img_w), (seg_h, seg_w) = img_shape[:2], seg_shape[:2]
    text = (f'image {img_path} is {img_w}x{img_h} (width x height) as loaded '
            f'but its annotation {seg_path} is {seg_w}x{seg_h}; a label map '
            'must have the size of its image. ')
    orientation = exif_orientation(img_path)
    if (orientation in SWAPPING_ORIENTATIONS
            and (img_h, img_w) == (seg_w, seg_h)):
        return text + (
            f'The image carries the EXIF tag Orientation={orientation} '
            f'({EXIF_ORIENTATIONS[orientation]}), which LoadImageFromFile '
            "applies (color_type='color' with imdecode_backend 'cv2' or "
            "'pillow'), while label maps are read as stored. If the labels "
            'were drawn on the stored pixels, load the images with '
            "dict(type='LoadImageFromFile', "
            "color_type='color_ignore_orientation'); otherwise re-save the "
            'image upright without the tag.')
    return text + (
        'The dataset was converted inconsistently: a converter that resizes '
        'images must write each label map at the same size (nearest-'
        'neighbour), as tools/dataset_converters/ do; re-run the converter '
        'or fix the image/annotation pairing (see docs/datasets.md).')
