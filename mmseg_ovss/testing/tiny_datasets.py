"""Tiny datasets written in each benchmark's real on-disk layout.

``make_tiny_dataset(name, root)`` writes a few random images and label maps
below ``root`` (what ``$OVSS_DATA_ROOT`` points to) exactly where the base
config ``configs/_base_/datasets/<name>.py`` looks for them, with each
dataset's label conventions (palette PNG for VOC, 0 = background / "other",
255 or 65535 for unlabelled pixels, uint16 TIFF for > 255 classes), split
files included. Labels are blocks of random ids, so nearest-neighbour
resizing keeps them meaningful.
"""
import os
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class TinyLayout:
    """Where one benchmark keeps its files and how its labels look."""
    root: str                    # data root below $OVSS_DATA_ROOT
    img_dirs: Tuple[str, ...]    # image folder per split (val first)
    seg_dirs: Tuple[str, ...]    # annotation folder per split
    label_values: Tuple[int, int]  # ids drawn from [low, high]
    unlabelled: int              # value written for unlabelled pixels
    img_suffix: str = '.jpg'
    seg_suffix: str = '.png'
    split_files: Tuple[str, ...] = ()  # id lists per split (same order)
    wide: bool = False           # uint16 TIFF labels
    palette: bool = False        # VOC palette PNG
    id_format: str = '{split}_{index:06d}'
    splits: Tuple[str, ...] = ('val', )


_VOC = TinyLayout(
    root='VOCdevkit/VOC2012',
    img_dirs=('JPEGImages', 'JPEGImages'),
    seg_dirs=('SegmentationClass', 'SegmentationClass'),
    split_files=('ImageSets/Segmentation/val.txt',
                 'ImageSets/Segmentation/train.txt'),
    label_values=(0, 20), unlabelled=255, palette=True,
    id_format='2007_{index:06d}', splits=('val', 'train'))
_CONTEXT = TinyLayout(
    root='VOCdevkit/VOC2010',
    img_dirs=('JPEGImages', 'JPEGImages'),
    seg_dirs=('SegmentationClassContext', 'SegmentationClassContext'),
    split_files=('ImageSets/SegmentationContext/val.txt',
                 'ImageSets/SegmentationContext/train.txt'),
    label_values=(0, 59), unlabelled=0,
    id_format='2008_{index:06d}', splits=('val', 'train'))

LAYOUTS = {
    'voc21': _VOC,
    'voc20': _VOC,
    'pc60': _CONTEXT,
    'pc59': _CONTEXT,
    'pc459': TinyLayout(
        root='VOCdevkit/VOC2010',
        img_dirs=('JPEGImages', ),
        seg_dirs=('annotations_detectron2/pc459_val', ),
        split_files=('ImageSets/SegmentationContext/val.txt', ),
        label_values=(0, 458), unlabelled=65535, wide=True,
        seg_suffix='.tif', id_format='2008_{index:06d}'),
    'coco_object': TinyLayout(
        root='coco_object',
        img_dirs=('images/val2017', 'images/train2017'),
        seg_dirs=('annotations/val2017', 'annotations/train2017'),
        label_values=(0, 80), unlabelled=255,
        seg_suffix='_instanceTrainIds.png', id_format='{index:012d}',
        splits=('val', 'train')),
    'coco_stuff171': TinyLayout(
        root='coco_stuff164k',
        img_dirs=('images/val2017', 'images/train2017'),
        seg_dirs=('annotations/val2017', 'annotations/train2017'),
        label_values=(0, 170), unlabelled=255,
        seg_suffix='_labelTrainIds.png', id_format='{index:012d}',
        splits=('val', 'train')),
    'ade150': TinyLayout(
        root='ade/ADEChallengeData2016',
        img_dirs=('images/validation', 'images/training'),
        seg_dirs=('annotations/validation', 'annotations/training'),
        label_values=(0, 150), unlabelled=0,
        id_format='ADE_{split}_{index:08d}', splits=('val', 'train')),
    'ade847': TinyLayout(
        root='ADE20K_2021_17_01',
        img_dirs=('images_detectron2/validation', ),
        seg_dirs=('annotations_detectron2/validation', ),
        label_values=(0, 846), unlabelled=65535, wide=True,
        seg_suffix='.tif', id_format='ADE_{split}_{index:08d}'),
    'cityscapes': TinyLayout(
        root='cityscapes',
        img_dirs=('leftImg8bit/val', 'leftImg8bit/train'),
        seg_dirs=('gtFine/val', 'gtFine/train'),
        label_values=(0, 18), unlabelled=255,
        img_suffix='_leftImg8bit.png', seg_suffix='_gtFine_labelTrainIds.png',
        id_format='{city}/{city}_000000_{index:06d}',
        splits=('val', 'train')),
}
_CITY_OF_SPLIT = {'val': 'frankfurt', 'train': 'aachen'}


def voc_palette() -> List[int]:
    """The PASCAL VOC colour map (bit-interleaved), flattened for Pillow."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def random_label_map(rng: np.random.Generator, size: Tuple[int, int],
                     low: int, high: int, unlabelled: int,
                     blocks: Tuple[int, int] = (4, 6)) -> np.ndarray:
    """Blocks of random ids in [low, high] with an unlabelled border strip."""
    h, w = size
    grid = rng.integers(low, high + 1, size=blocks)
    # make sure the extreme ids occur (range checks, uint16 values)
    grid.flat[0], grid.flat[-1] = low, high
    rows = np.minimum(np.arange(h) * blocks[0] // h, blocks[0] - 1)
    cols = np.minimum(np.arange(w) * blocks[1] // w, blocks[1] - 1)
    label = grid[rows][:, cols]
    label[:, :max(1, w // 16)] = unlabelled
    return label


def random_image(rng: np.random.Generator,
                 size: Tuple[int, int]) -> np.ndarray:
    """An RGB image of coloured blocks with a little noise."""
    h, w = size
    blocks = rng.integers(0, 256, size=(4, 6, 3))
    rows = np.minimum(np.arange(h) * 4 // h, 3)
    cols = np.minimum(np.arange(w) * 6 // w, 5)
    image = blocks[rows][:, cols] + rng.integers(-8, 9, size=(h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def sample_ids(layout: TinyLayout, split: str, num_images: int) -> List[str]:
    """File ids (without folder or suffix) of one split."""
    if layout.split_files:
        split = layout.splits[0]  # one image folder: the lists share ids
    return [
        layout.id_format.format(
            split=split, index=index + 1, city=_CITY_OF_SPLIT.get(split, ''))
        for index in range(num_images)
    ]


def _write_label(path: Path, label: np.ndarray, layout: TinyLayout) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout.wide:
        Image.fromarray(label.astype(np.uint16)).save(path, format='TIFF')
    elif layout.palette:
        image = Image.fromarray(label.astype(np.uint8), mode='P')
        image.putpalette(voc_palette())
        image.save(path)
    else:
        Image.fromarray(label.astype(np.uint8)).save(path)


def make_tiny_dataset(name: str,
                      root: Union[str, Path],
                      num_images: int = 2,
                      image_size: Tuple[int, int] = (64, 96),
                      seed: Optional[int] = None) -> str:
    """Write a tiny dataset of benchmark ``name`` below ``root``.

    Args:
        name: a base-config name (``voc21``, ``pc459``, ``cityscapes``, ...).
        root: the folder ``$OVSS_DATA_ROOT`` will point to.
        num_images: images per split (val, and train where the benchmark has
            a training split; VOC/Context list the same ids in both).
        image_size: (height, width) of every image and label map.
        seed: random seed (default: derived from the data root, so that
            benchmarks sharing files, e.g. voc21/voc20, write the same).

    Returns:
        str: the dataset's data root (``root`` / the benchmark's folder).
    """
    if name not in LAYOUTS:
        raise KeyError(f'unknown benchmark {name!r}; choose from '
                       f'{sorted(LAYOUTS)}')
    layout = LAYOUTS[name]
    data_root = Path(root) / layout.root
    base_seed = zlib.crc32(layout.root.encode()) if seed is None else seed
    for split_index, split in enumerate(layout.splits):
        ids = sample_ids(layout, split, num_images)
        if layout.split_files:
            list_path = data_root / layout.split_files[split_index]
            list_path.parent.mkdir(parents=True, exist_ok=True)
            list_path.write_text('\n'.join(ids) + '\n')
            shared = layout.img_dirs[split_index] == layout.img_dirs[0]
            if split_index and shared:
                continue  # VOC/Context: the training list reuses the images
        for index, sample_id in enumerate(ids):
            rng = np.random.default_rng([base_seed, split_index, index])
            image_path = (data_root / layout.img_dirs[split_index] /
                          f'{sample_id}{layout.img_suffix}')
            image_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(random_image(rng, image_size)).save(
                image_path, quality=95)
            label = random_label_map(rng, image_size, *layout.label_values,
                                     unlabelled=layout.unlabelled)
            _write_label(
                data_root / layout.seg_dirs[split_index] /
                f'{sample_id}{layout.seg_suffix}', label, layout)
    return str(data_root)


@contextmanager
def exported_data_root(root: Union[str, Path]):
    """Set ``OVSS_DATA_ROOT`` (the configs' data root) to ``root`` for the
    block, then restore what it was (module- and session-scoped fixtures
    cannot use ``monkeypatch``)."""
    previous = os.environ.get('OVSS_DATA_ROOT')
    os.environ['OVSS_DATA_ROOT'] = str(root)
    try:
        yield Path(root)
    finally:
        if previous is None:
            os.environ.pop('OVSS_DATA_ROOT', None)
        else:
            os.environ['OVSS_DATA_ROOT'] = previous
