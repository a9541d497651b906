"""Tiny datasets with planted ground truth, for end-to-end metric values.

A random tiny model predicts arbitrary label maps, so an end-to-end run on
random labels can only check that the metrics lie in [0, 100]. Here the
ground truth is planted instead:

1. :func:`make_tiny_dataset` writes a benchmark's tiny dataset in its real
   on-disk layout (images, split files, placeholder labels);
2. :func:`plant_ground_truth` builds the model of a config, predicts every
   image by a direct route (the file decoded with mmcv, rescaled as the test
   pipeline's ``Resize``, normalised by hand with the config's mean and std,
   ``model.predict``) and writes that prediction as the image's label file,
   encoded by the benchmark's own convention (:data:`LABEL_ENCODING`:
   palette PNG, the ``reduce_zero_label`` shift, uint16 TIFF); images after
   the first get a known corruption, a block of wrong labels and a block of
   ignored pixels (:data:`CORRUPTED`, :data:`IGNORED`);
3. the model's weights are saved as a checkpoint, so that ``tools/test.py
   CONFIG CHECKPOINT`` evaluates the same model.

The tool must then report what :func:`expected_metrics` counts by hand:
aAcc = mIoU = mAcc = 100 without corruption, and the exact per-class
intersections and unions with it. This checks resizing, label encoding and
alignment, the ignore index and the metric plumbing through the real tool.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from mmseg_ovss.utils.errors import OVSSConfigError

from .tiny_datasets import LAYOUTS, _write_label, make_tiny_dataset, sample_ids

# benchmark -> (value on disk of class 0, value on disk of an ignored pixel),
# the conventions of docs/datasets.md: VOC20, PC59 and ADE-150 store class
# k as k + 1 (their 0 is the ignored background / "other"), the others store
# k as k, unlabelled 255 (uint8) or 65535 (uint16 TIFF).
LABEL_ENCODING: Dict[str, Tuple[int, int]] = {
    'voc21': (0, 255),
    'voc20': (1, 255),
    'pc60': (0, 255),
    'pc59': (1, 0),
    'pc459': (0, 65535),
    'coco_object': (0, 255),
    'coco_stuff171': (0, 255),
    'ade150': (1, 0),
    'ade847': (0, 65535),
    'cityscapes': (0, 255),
}
# dataset class of each benchmark's base config
DATASET_BENCHMARK: Dict[str, str] = {
    'PascalVOC21Dataset': 'voc21',
    'PascalVOC20Dataset': 'voc20',
    'PascalContext60Dataset': 'pc60',
    'PascalContext59Dataset': 'pc59',
    'PascalContext459Dataset': 'pc459',
    'COCOObjectDataset': 'coco_object',
    'COCOStuff171Dataset': 'coco_stuff171',
    'ADE20K150Dataset': 'ade150',
    'ADE20K847Dataset': 'ade847',
    'Cityscapes19Dataset': 'cityscapes',
}
IMAGE_SIZE = (64, 96)
# (rows, cols) of the corruption in every image after the first (64 x 96):
# ground truth = (prediction + 1) mod K there, and ignored pixels
CORRUPTED = (slice(8, 24), slice(16, 48))
IGNORED = (slice(40, 56), slice(56, 88))
IGNORE = -1  # ignored pixels in the label maps returned here


def benchmark_of(cfg) -> str:
    """The benchmark whose base config a config's test dataset comes from."""
    dataset_type = cfg.test_dataloader.dataset.type
    if dataset_type not in DATASET_BENCHMARK:
        raise OVSSConfigError(
            f'no planted layout for dataset {dataset_type!r}; known: '
            f'{sorted(DATASET_BENCHMARK)}')
    return DATASET_BENCHMARK[dataset_type]


def encode_labels(labels: np.ndarray, benchmark: str) -> np.ndarray:
    """Class ids (``IGNORE`` for ignored pixels) -> values on disk."""
    offset, ignored = LABEL_ENCODING[benchmark]
    return np.where(labels == IGNORE, ignored, labels + offset)


def pipeline_resize_scale(cfg) -> Optional[Tuple[int, int]]:
    """``scale`` of the test pipeline's keep-ratio ``Resize`` (or None)."""
    steps = [s for s in cfg.test_dataloader.dataset.pipeline
             if s['type'] == 'Resize']
    if not steps:
        return None
    if len(steps) > 1 or not steps[0].get('keep_ratio', False):
        raise OVSSConfigError(
            'planted ground truth expects one keep-ratio Resize in the test '
            f'pipeline, got {steps}')
    return tuple(steps[0]['scale'])


def predict_file(model, path: Path, scale, preprocess) -> np.ndarray:
    """(H, W) labels of one image file at its original size, by hand: the
    file decoded (BGR), rescaled like ``Resize(keep_ratio=True)``, turned to
    RGB and normalised with the config's ``data_preprocessor`` mean and std,
    then ``model.predict``."""
    import mmcv
    import torch
    from mmseg.structures import SegDataSample
    image = mmcv.imfrombytes(Path(path).read_bytes(), flag='color',
                             backend='cv2')
    ori_shape = image.shape[:2]
    if scale is not None:
        image = mmcv.imrescale(image, scale, interpolation='bilinear',
                               backend='cv2')
    if preprocess.get('bgr_to_rgb', False):
        image = image[..., ::-1]
    pixels = torch.from_numpy(
        np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    mean = torch.tensor(preprocess['mean'], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(preprocess['std'], dtype=torch.float32).view(3, 1, 1)
    inputs = ((pixels - mean) / std)[None]
    sample = SegDataSample(metainfo=dict(
        img_path=str(path), ori_shape=ori_shape, img_shape=image.shape[:2],
        pad_shape=image.shape[:2], padding_size=(0, 0, 0, 0)))
    with torch.no_grad():
        result = model.predict(inputs, [sample])
    return result[0].pred_sem_seg.data[0].cpu().numpy().astype(np.int64)


@dataclass
class PlantedDataset:
    """What :func:`plant_ground_truth` wrote."""
    data_root: str
    checkpoint: str
    num_classes: int
    predictions: List[np.ndarray]
    ground_truths: List[np.ndarray]  # IGNORE marks ignored pixels

    def expected_metrics(self) -> Dict[str, float]:
        return expected_metrics(self.predictions, self.ground_truths,
                                self.num_classes)


def expected_metrics(predictions: Sequence[np.ndarray],
                     ground_truths: Sequence[np.ndarray],
                     num_classes: int) -> Dict[str, float]:
    """aAcc, mIoU, mAcc (percent) counted pixel by pixel over all images.

    Per class c: I_c = #(pred = c = gt), U_c = #(pred = c) + #(gt = c) - I_c
    over non-ignored pixels; IoU_c = I_c / U_c and Acc_c = I_c / #(gt = c),
    classes with a zero denominator left out of the means (mmseg's
    IoUMetric semantics).
    """
    inter = np.zeros(num_classes)
    pred_area = np.zeros(num_classes)
    gt_area = np.zeros(num_classes)
    for pred, gt in zip(predictions, ground_truths):
        valid = gt != IGNORE
        pred, gt = pred[valid], gt[valid]
        inter += np.bincount(gt[pred == gt], minlength=num_classes)
        pred_area += np.bincount(pred, minlength=num_classes)
        gt_area += np.bincount(gt, minlength=num_classes)
    union = pred_area + gt_area - inter
    iou = inter[union > 0] / union[union > 0]
    acc = inter[gt_area > 0] / gt_area[gt_area > 0]
    return dict(aAcc=100 * inter.sum() / gt_area.sum(),
                mIoU=100 * iou.mean(), mAcc=100 * acc.mean())


def corrupt(prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """Ground truth = prediction, except (pred + 1) mod K on ``CORRUPTED``
    and ``IGNORE`` on ``IGNORED``."""
    label = prediction.copy()
    label[CORRUPTED] = (label[CORRUPTED] + 1) % num_classes
    label[IGNORED] = IGNORE
    return label


def plant_ground_truth(cfg, root: Union[str, Path], checkpoint: Union[str,
                                                                       Path],
                       num_images: int = 2, corrupted: bool = True,
                       seed: int = 0) -> PlantedDataset:
    """Write a planted tiny dataset for ``cfg`` below ``root``.

    ``cfg`` is the config ``tools/test.py`` will run, with
    ``test_dataloader.dataset.data_root`` already pointing below ``root``
    (see :func:`planted_data_root`). The model is built from ``cfg.model``
    (seeded), given the dataset's classes as ``DatasetVocabularyHook``
    does, saved to ``checkpoint`` and run on every image.
    """
    import torch
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS, MODELS

    import mmseg_ovss  # noqa: F401  (registers the components)
    benchmark = benchmark_of(cfg)
    data_root = Path(make_tiny_dataset(benchmark, root, num_images=num_images,
                                       image_size=IMAGE_SIZE, seed=seed))
    configured = Path(cfg.test_dataloader.dataset.data_root)
    if configured.resolve() != data_root.resolve():
        raise OVSSConfigError(
            f'the config reads {configured}, the planted data is in '
            f'{data_root}; pass test_dataloader.dataset.data_root='
            f'{data_root}')
    init_default_scope('mmseg')
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model).eval()
    classes = DATASETS.get(cfg.test_dataloader.dataset.type).METAINFO[
        'classes']
    if hasattr(model, 'set_dataset_classes'):
        model.set_dataset_classes(classes)
    torch.save({'state_dict': model.state_dict()}, str(checkpoint))
    layout = LAYOUTS[benchmark]
    scale = pipeline_resize_scale(cfg)
    predictions, truths = [], []
    for index, sample_id in enumerate(sample_ids(layout, 'val', num_images)):
        image = data_root / layout.img_dirs[0] / f'{sample_id}' \
            f'{layout.img_suffix}'
        prediction = predict_file(model, image, scale,
                                  cfg.model.data_preprocessor)
        if prediction.shape != IMAGE_SIZE:
            raise AssertionError(
                f'{image}: prediction of shape {prediction.shape}, not the '
                f'original {IMAGE_SIZE}')
        truth = corrupt(prediction, len(classes)) if (
            corrupted and index > 0) else prediction
        _write_label(
            data_root / layout.seg_dirs[0] / f'{sample_id}{layout.seg_suffix}',
            encode_labels(truth, benchmark), layout)
        predictions.append(prediction)
        truths.append(truth)
    return PlantedDataset(str(data_root), str(checkpoint), len(classes),
                          predictions, truths)


def planted_data_root(benchmark: str, root: Union[str, Path]) -> str:
    """Where :func:`plant_ground_truth` writes ``benchmark`` below ``root``
    (the value of ``test_dataloader.dataset.data_root``)."""
    return str(Path(root) / LAYOUTS[benchmark].root)
