"""Derive COCO-Object labels (*_instanceTrainIds.png) from COCO-Stuff 164k.

COCO-Object has 81 classes: 0 = background (every stuff class), 1..80 = the
COCO things in COCO category order. Two sources give the same classes:

* ``--source stuffthingmaps`` (default, the labels behind the published
  numbers of GroupViT/TCL/SCLIP): the raw COCO-Stuff 164k maps
  ``annotations/<split>/<id>.png`` whose pixels hold COCO category id - 1
  (0..181, 255 unlabelled). Things become 1..80, stuff becomes 0.
* ``--source instances``: the COCO instances JSON
  (``annotations/instances_<split>.json``) rasterised with pycocotools,
  larger instances first so that smaller ones stay visible.

Unlabelled pixels become background by default, as in the reference
conversion (its uint8 arithmetic wrapped 255 + 1 to 0); ``--unlabelled
ignore`` keeps them at 255 instead.

Example::

    python tools/dataset_converters/coco_object.py data/coco_stuff164k \\
        -o data/coco_object
"""
import argparse
import os
import os.path as osp
from functools import partial
from multiprocessing import Pool
from typing import List, Optional

import numpy as np
from PIL import Image

# COCO category ids of the 80 thing classes, in COCO order (train ids 1..80).
COCO_THING_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
    23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64,
    65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88,
    89, 90)
IGNORE = 255
SUFFIX = '_instanceTrainIds.png'


def stuffthingmap_lut(unlabelled: str = 'background') -> np.ndarray:
    """Lookup table: raw COCO-Stuff value (category id - 1) -> object id."""
    lut = np.zeros(256, dtype=np.uint8)  # stuff (91..181) -> background
    lut[:91] = IGNORE  # unused COCO ids never occur; mark them if they do
    for train_id, category_id in enumerate(COCO_THING_IDS, start=1):
        lut[category_id - 1] = train_id
    lut[255] = 0 if unlabelled == 'background' else IGNORE
    return lut


def convert_stuffthingmap(raw: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map one raw COCO-Stuff label map to COCO-Object ids."""
    return lut[raw]


def rasterise_instances(coco, image_id: int, height: int, width: int,
                        unlabelled: str = 'background') -> np.ndarray:
    """COCO-Object label map of one image from its instance annotations."""
    train_id = {cat: i for i, cat in enumerate(COCO_THING_IDS, start=1)}
    fill = 0 if unlabelled == 'background' else IGNORE
    label = np.full((height, width), fill, dtype=np.uint8)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
    for ann in sorted(anns, key=lambda a: -a['area']):
        if ann['category_id'] in train_id:
            label[coco.annToMask(ann) > 0] = train_id[ann['category_id']]
    return label


def _convert_one(raw_path: str, out_dir: str, lut: np.ndarray) -> None:
    raw = np.array(Image.open(raw_path))
    if raw.ndim != 2:
        raise ValueError(f'{raw_path} is not a single-channel label map')
    stem = osp.splitext(osp.basename(raw_path))[0]
    Image.fromarray(convert_stuffthingmap(raw, lut)).save(
        osp.join(out_dir, stem + SUFFIX))


def convert_split_from_stuffthingmaps(coco_root: str, out_root: str,
                                      split: str, unlabelled: str,
                                      nproc: int = 1) -> int:
    """Convert every raw map of ``annotations/<split>``; returns the count."""
    ann_dir = osp.join(coco_root, 'annotations', split)
    if not osp.isdir(ann_dir):
        raise SystemExit(f'{ann_dir} does not exist: pass the COCO-Stuff 164k '
                         'root holding annotations/<split>/*.png (the '
                         'stuffthingmaps_trainval2017 release)')
    raw_paths = sorted(
        osp.join(ann_dir, f) for f in os.listdir(ann_dir)
        if f.endswith('.png') and 'TrainIds' not in f)
    if not raw_paths:
        raise SystemExit(f'no raw COCO-Stuff maps (<id>.png) in {ann_dir}')
    out_dir = osp.join(out_root, 'annotations', split)
    os.makedirs(out_dir, exist_ok=True)
    work = partial(_convert_one, out_dir=out_dir,
                   lut=stuffthingmap_lut(unlabelled))
    if nproc > 1:
        with Pool(nproc) as pool:
            pool.map(work, raw_paths, chunksize=64)
    else:
        for path in raw_paths:
            work(path)
    return len(raw_paths)


def convert_split_from_instances(coco_root: str, out_root: str, split: str,
                                 unlabelled: str) -> int:
    """Rasterise ``annotations/instances_<split>.json``; returns the count."""
    try:
        from pycocotools.coco import COCO
    except ImportError as err:
        raise SystemExit(
            '--source instances needs pycocotools: pip install pycocotools '
            '(or use the default --source stuffthingmaps)') from err
    json_path = osp.join(coco_root, 'annotations', f'instances_{split}.json')
    if not osp.isfile(json_path):
        raise SystemExit(f'{json_path} does not exist: put the COCO 2017 '
                         'instances JSON there')
    coco = COCO(json_path)
    out_dir = osp.join(out_root, 'annotations', split)
    os.makedirs(out_dir, exist_ok=True)
    for image in coco.loadImgs(coco.getImgIds()):
        label = rasterise_instances(coco, image['id'], image['height'],
                                    image['width'], unlabelled)
        stem = osp.splitext(image['file_name'])[0]
        Image.fromarray(label).save(osp.join(out_dir, stem + SUFFIX))
    return len(coco.getImgIds())


def link_images(coco_root: str, out_root: str, split: str) -> None:
    """Make ``<out>/images/<split>`` point to the COCO-Stuff images."""
    source = osp.abspath(osp.join(coco_root, 'images', split))
    target = osp.join(out_root, 'images', split)
    if osp.abspath(target) == source or osp.exists(target):
        return
    if not osp.isdir(source):
        raise SystemExit(f'{source} does not exist: the COCO 2017 images '
                         'must be under <coco_root>/images/<split>')
    os.makedirs(osp.dirname(target), exist_ok=True)
    os.symlink(source, target)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Make COCO-Object labels (*_instanceTrainIds.png: '
        '0 background, 1..80 COCO things) from COCO-Stuff 164k.')
    parser.add_argument('coco_root', help='COCO-Stuff 164k root (images/, '
                        'annotations/)')
    parser.add_argument('-o', '--out-dir', help='output root (default: '
                        'coco_object next to coco_root); images/<split> is '
                        'linked there')
    parser.add_argument('--source', choices=('stuffthingmaps', 'instances'),
                        default='stuffthingmaps')
    parser.add_argument('--splits', nargs='+', default=['val2017'],
                        help='splits to convert (default: val2017)')
    parser.add_argument('--unlabelled', choices=('background', 'ignore'),
                        default='background',
                        help='what unlabelled pixels become (default: '
                        'background, as in the reference conversion)')
    parser.add_argument('--nproc', type=int, default=1)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    out_root = args.out_dir or osp.join(
        osp.dirname(osp.abspath(args.coco_root)), 'coco_object')
    for split in args.splits:
        if args.source == 'stuffthingmaps':
            count = convert_split_from_stuffthingmaps(
                args.coco_root, out_root, split, args.unlabelled, args.nproc)
        else:
            count = convert_split_from_instances(
                args.coco_root, out_root, split, args.unlabelled)
        link_images(args.coco_root, out_root, split)
        print(f'{split}: {count} label maps written to '
              f'{osp.join(out_root, "annotations", split)}')


if __name__ == '__main__':
    main()
