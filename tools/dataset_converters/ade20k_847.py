"""Make ADE20K-847: resized images and uint16 TIFF labels from ADE20K 2021.

Reads ``ADE20K_2021_17_01/index_ade20k.pkl`` (its ``folder`` and ``filename``
lists) and each image's ``*_seg.png``, whose class index is
``R // 10 * 256 + G``. The 847 benchmark categories (``ADE847_CATEGORIES``
of ``mmseg_ovss.datasets.large_vocabularies``) map to train ids 0..846,
every other pixel to 65535 (the ignore index). Images and labels whose short
side exceeds 512 are resized to 512 (bilinear / nearest), as in the
detectron2 / CAT-Seg preparation. Output below the dataset root:
``images_detectron2/<split>/<name>.jpg`` and
``annotations_detectron2/<split>/<name>.tif``.

Example::

    python tools/dataset_converters/ade20k_847.py data/ADE20K_2021_17_01
"""
import argparse
import functools
import os
import os.path as osp
import pickle
from typing import List, Optional, Tuple

import cv2
import numpy as np
from PIL import Image

IGNORE = 65535
SPLIT_OF_TAG = {'val': 'validation', 'train': 'training'}


@functools.lru_cache(maxsize=1)
def category_lut() -> np.ndarray:
    """Lookup table ADE20K 2021 class index -> 847 train id (else 65535).

    Covers every index an 8-bit ``*_seg.png`` can encode (R // 10 <= 25).
    """
    from mmseg_ovss.datasets.large_vocabularies import ADE847_CATEGORIES
    lut = np.full(26 * 256, IGNORE, dtype=np.uint16)
    for train_id, (_, ade_index) in enumerate(ADE847_CATEGORIES):
        lut[ade_index] = train_id
    return lut


def decode_class_index(seg_rgb: np.ndarray) -> np.ndarray:
    """ADE20K ``*_seg.png`` (RGB) -> class index map R // 10 * 256 + G."""
    r = seg_rgb[..., 0].astype(np.int32)
    g = seg_rgb[..., 1].astype(np.int32)
    return r // 10 * 256 + g


def resized_shape(h: int, w: int, max_short: int) -> Optional[Tuple[int, int]]:
    """(h, w) with the short side at ``max_short``, or None if small enough."""
    if min(h, w) <= max_short:
        return None
    if w >= h:
        return max_short, round(w / h * max_short)
    return round(h / w * max_short), max_short


def convert_one(image_path: str, out_image: str, out_label: str,
                max_short: int = 512) -> None:
    image = np.asarray(Image.open(image_path).convert('RGB'))
    seg_path = image_path[:-len('.jpg')] + '_seg.png'
    index = decode_class_index(np.asarray(Image.open(seg_path).convert('RGB')))
    label = category_lut()[index]
    shape = resized_shape(*image.shape[:2], max_short)
    if shape is not None:
        size = (shape[1], shape[0])
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    Image.fromarray(image).save(out_image, quality=95)
    Image.fromarray(label.astype(np.uint16)).save(out_label, format='TIFF')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert ADE20K_2021_17_01 to ADE20K-847 (uint16 TIFF '
        'train ids, ignore 65535; short side <= 512).')
    parser.add_argument('ade_root', help='the ADE20K_2021_17_01 folder')
    parser.add_argument('--splits', nargs='+', default=['validation'],
                        choices=('validation', 'training'))
    parser.add_argument('--max-short-side', type=int, default=512)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    root = osp.abspath(args.ade_root)
    index_file = osp.join(root, 'index_ade20k.pkl')
    if not osp.isfile(index_file):
        raise SystemExit(f'{index_file} does not exist: pass the unpacked '
                         'ADE20K_2021_17_01 folder')
    with open(index_file, 'rb') as f:
        index = pickle.load(f)
    count = 0
    for folder, filename in zip(index['folder'], index['filename']):
        split = SPLIT_OF_TAG.get(filename.split('_')[1])
        if split not in args.splits:
            continue
        # the index stores folders relative to the parent of the root
        image_path = osp.join(osp.dirname(root), folder, filename)
        if not osp.isfile(image_path):
            image_path = osp.join(root, folder, filename)
        out_image = osp.join(root, 'images_detectron2', split, filename)
        out_label = osp.join(root, 'annotations_detectron2', split,
                             filename[:-len('.jpg')] + '.tif')
        os.makedirs(osp.dirname(out_image), exist_ok=True)
        os.makedirs(osp.dirname(out_label), exist_ok=True)
        convert_one(image_path, out_image, out_label, args.max_short_side)
        count += 1
    print(f'{count} images converted below {root}')
    return count


if __name__ == '__main__':
    main()
