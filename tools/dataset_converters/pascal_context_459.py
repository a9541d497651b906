"""Make PASCAL Context 459 labels: uint16 TIFFs from the full .mat release.

The full PASCAL Context release (``trainval.tar.gz``) stores one
``trainval/<id>.mat`` per image whose ``LabelMap`` holds the ids 1..459 of
``labels.txt`` and 0 for unlabelled pixels. The benchmark (detectron2 /
CAT-Seg / SED preparation) uses train ids 0..458 = label id - 1; unlabelled
pixels become 65535, the dataset's ignore index. Output:
``VOC2010/annotations_detectron2/pc459_val/<id>.tif``.

Example::

    python tools/dataset_converters/pascal_context_459.py \\
        data/VOCdevkit/VOC2010 --mat-dir data/VOCdevkit/VOC2010/trainval
"""
import argparse
import os
import os.path as osp
from typing import List, Optional

import numpy as np
from PIL import Image

NUM_CLASSES = 459
IGNORE = 65535


def label_map_to_train_ids(label_map: np.ndarray) -> np.ndarray:
    """LabelMap (0 unlabelled, 1..459) -> uint16 train ids (65535, 0..458)."""
    label_map = np.asarray(label_map).astype(np.int64)
    if label_map.max(initial=0) > NUM_CLASSES or label_map.min(initial=0) < 0:
        raise ValueError(
            f'LabelMap values must lie in 0..{NUM_CLASSES}, found '
            f'{label_map.min()}..{label_map.max()}: not a PASCAL Context '
            'full (459-class) annotation')
    train_ids = (label_map - 1).astype(np.uint16)  # 0 - 1 wraps to 65535
    return train_ids


def convert_one(mat_path: str, out_path: str) -> None:
    from scipy.io import loadmat
    label_map = loadmat(mat_path)['LabelMap']
    Image.fromarray(label_map_to_train_ids(label_map)).save(
        out_path, format='TIFF')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert PASCAL Context full (459 classes) .mat '
        'annotations to uint16 TIFF train ids (ignore 65535).')
    parser.add_argument('voc2010_root', help='VOCdevkit/VOC2010 folder')
    parser.add_argument('--mat-dir', help='folder of <id>.mat files '
                        '(default: <voc2010_root>/trainval)')
    parser.add_argument('--split-file', help='ids to convert (default: '
                        '<root>/ImageSets/SegmentationContext/val.txt)')
    parser.add_argument('--out-dir', help='output folder (default: '
                        '<root>/annotations_detectron2/pc459_val)')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    root = args.voc2010_root
    mat_dir = args.mat_dir or osp.join(root, 'trainval')
    split_file = args.split_file or osp.join(
        root, 'ImageSets/SegmentationContext/val.txt')
    out_dir = args.out_dir or osp.join(root,
                                       'annotations_detectron2/pc459_val')
    for path, what in ((mat_dir, 'the .mat folder of trainval.tar.gz'),
                       (split_file, 'the id list (mmseg PASCAL Context '
                        'layout)')):
        if not osp.exists(path):
            raise SystemExit(f'{path} does not exist: expected {what}')
    with open(split_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    os.makedirs(out_dir, exist_ok=True)
    missing = []
    for sample_id in ids:
        mat_path = osp.join(mat_dir, f'{sample_id}.mat')
        if not osp.isfile(mat_path):
            missing.append(mat_path)
            continue
        convert_one(mat_path, osp.join(out_dir, f'{sample_id}.tif'))
    print(f'{len(ids) - len(missing)} label maps written to {out_dir}')
    if missing:
        raise SystemExit(f'{len(missing)} ids have no .mat file, e.g. '
                         f'{missing[0]}')
    return len(ids)


if __name__ == '__main__':
    main()
