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

A segmentor may leave pixels unlabelled: a prediction outside the classes
``[0, K)``, e.g. PnP-OVSS's "all classes off" background channel on a
dataset without a background class predicts the ignore index 255. mmseg's
``IoUMetric`` counts such a pixel in no class's prediction area. Its ground
truth is ignored in the first image (the model's own "no class" is the
dataset's "ignored", as VOC20's background) and is class
:data:`UNLABELLED_TRUTH` in the corrupted images, so that there the tool
must count each one as a miss of that class.

Any mmseg segmentor works: the CLIP segmentors of this package (given the
dataset's classes) and mmseg's ``EncoderDecoder`` (the tiny SegFormer of
:mod:`mmseg_ovss.testing.tiny_configs`). The model is built from the config
(seeded), or passed in: loaded from a trained checkpoint
(:func:`load_model`) or built as the tool's Runner builds it without a
checkpoint (:func:`runner_model`). With ``tie_rtol`` the pixels whose two
best scores are closer than fp32 rounding can be trusted (:func:`near_ties`)
are ignored in the ground truth, so that the counts do not depend on the
CPU, the thread count or the batch size of the run.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

from .labels import decided_pixels
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
# ground truth of the unlabelled pixels (predictions outside [0, K)) of the
# corrupted images
UNLABELLED_TRUTH = 0


def benchmark_of(cfg) -> str:
    """The benchmark whose base config a config's test dataset comes from."""
    dataset_type = cfg.test_dataloader.dataset.type
    if dataset_type not in DATASET_BENCHMARK:
        raise OVSSConfigError(
            f'no planted layout for dataset {dataset_type!r}; known: '
            f'{sorted(DATASET_BENCHMARK)}')
    return DATASET_BENCHMARK[dataset_type]


def encode_labels(labels: np.ndarray, benchmark: str) -> np.ndarray:
    """Class ids (``IGNORE`` for ignored pixels) -> values on disk.

    A value that the benchmark's label files cannot hold (uint8 PNG, uint16
    TIFF) raises :class:`OVSSDataError` instead of wrapping around (VOC20's
    255 + 1 would be written as 0, its background).
    """
    offset, ignored = LABEL_ENCODING[benchmark]
    encoded = np.where(labels == IGNORE, ignored, labels + offset)
    dtype = np.dtype(np.uint16 if LAYOUTS[benchmark].wide else np.uint8)
    bad = (encoded < 0) | (encoded > np.iinfo(dtype).max)
    if bad.any():
        raise OVSSDataError(
            f'{benchmark} labels {sorted(set(labels[bad].tolist()))[:5]} '
            f'encode to values outside its {dtype.name} label files; pass '
            f'class ids or IGNORE ({IGNORE}), e.g. unlabelled predictions '
            'through uncorrupted() or corrupt()')
    return encoded


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


def predict_sample(model, path: Path, scale, preprocess):
    """The ``SegDataSample`` that ``model.predict`` returns for one image
    file, reached by hand: the file decoded (BGR), rescaled like
    ``Resize(keep_ratio=True)``, turned to RGB and normalised with the
    config's ``data_preprocessor`` mean and std. Its ``pred_sem_seg`` and
    ``seg_logits`` are at the file's original size."""
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
        return model.predict(inputs, [sample])[0]


def predict_bgr(model, image: np.ndarray):
    """The ``SegDataSample`` ``model.predict`` returns for one (H, W, 3) BGR
    image at its own size, through the model's own data preprocessor."""
    import torch
    from mmseg.structures import SegDataSample
    inputs = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    data = model.data_preprocessor(dict(inputs=[inputs]), False)
    shape = image.shape[:2]
    sample = SegDataSample(metainfo=dict(
        ori_shape=shape, img_shape=shape, pad_shape=shape,
        padding_size=[0, 0, 0, 0]))
    with torch.no_grad():
        return model.predict(data['inputs'], [sample])[0]


def predict_file(model, path: Path, scale, preprocess) -> np.ndarray:
    """(H, W) labels of one image file at its original size, by hand (see
    :func:`predict_sample`)."""
    result = predict_sample(model, path, scale, preprocess)
    return result.pred_sem_seg.data[0].cpu().numpy().astype(np.int64)


def near_ties(seg_logits, rtol: float) -> np.ndarray:
    """(H, W) mask of the pixels whose two best scores of ``seg_logits``
    (C, H, W) differ by at most ``rtol`` times the image's largest
    ``|score|``: there fp32 rounding (another CPU, thread count or batch
    size) may change the argmax."""
    if seg_logits.shape[0] < 2:
        raise OVSSConfigError(
            f'near_ties needs scores of at least 2 classes, got shape '
            f'{tuple(seg_logits.shape)}; pass tie_rtol=None for a '
            'single-channel (sigmoid) model')
    margin = rtol * seg_logits.abs().max()
    return (~decided_pixels(seg_logits, margin)).cpu().numpy()


@dataclass
class PlantedDataset:
    """What :func:`plant_ground_truth` wrote."""
    data_root: str
    checkpoint: Optional[str]  # None: no weights were saved
    num_classes: int
    predictions: List[np.ndarray]
    ground_truths: List[np.ndarray]  # IGNORE marks ignored pixels
    image_paths: List[str] = field(default_factory=list)
    # per image, the pixels ignored as near ties (all False without tie_rtol)
    ties: List[np.ndarray] = field(default_factory=list)

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
    IoUMetric semantics). An unlabelled prediction (outside ``[0, K)``)
    counts in no class's prediction area (mmseg's ``histc`` over the K
    bins), only in its ground truth's area.
    """
    inter = np.zeros(num_classes)
    pred_area = np.zeros(num_classes)
    gt_area = np.zeros(num_classes)
    for pred, gt in zip(predictions, ground_truths):
        valid = gt != IGNORE
        pred, gt = pred[valid], gt[valid]
        inter += np.bincount(gt[pred == gt], minlength=num_classes)
        pred_area += np.bincount(pred[~unlabelled(pred, num_classes)],
                                 minlength=num_classes)
        gt_area += np.bincount(gt, minlength=num_classes)
    union = pred_area + gt_area - inter
    iou = inter[union > 0] / union[union > 0]
    acc = inter[gt_area > 0] / gt_area[gt_area > 0]
    return dict(aAcc=100 * inter.sum() / gt_area.sum(),
                mIoU=100 * iou.mean(), mAcc=100 * acc.mean())


def reported_tolerance(num_classes: int) -> float:
    """How far a metric reported by ``IoUMetric`` may lie from
    :func:`expected_metrics`: mmseg rounds percentages to 2 decimals (half
    a unit of the last digit, 0.005) of float32 ratios of exact pixel counts
    averaged over at most ``num_classes`` classes (100 * (K + 2) * eps)."""
    return 0.005 + 100 * (num_classes + 2) * float(
        np.finfo(np.float32).eps)


def unlabelled(prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """Mask of the pixels a segmentor left unlabelled: predictions outside
    ``[0, num_classes)`` (e.g. its ignore index)."""
    return (prediction < 0) | (prediction >= num_classes)


def uncorrupted(prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """Ground truth = prediction, ``IGNORE`` where it is unlabelled."""
    label = prediction.copy()
    label[unlabelled(prediction, num_classes)] = IGNORE
    return label


def corrupt(prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """Ground truth = prediction, except (pred + 1) mod K on ``CORRUPTED``,
    ``UNLABELLED_TRUTH`` where the prediction is unlabelled (outside
    ``IGNORED``) and ``IGNORE`` on ``IGNORED``."""
    label = prediction.copy()
    label[CORRUPTED] = (label[CORRUPTED] + 1) % num_classes
    label[unlabelled(prediction, num_classes)] = UNLABELLED_TRUTH
    label[IGNORED] = IGNORE
    return label


def plant_ground_truth(cfg, root: Union[str, Path],
                       checkpoint: Optional[Union[str, Path]],
                       num_images: int = 2, corrupted: bool = True,
                       seed: int = 0, model=None,
                       tie_rtol: Optional[float] = None) -> PlantedDataset:
    """Write a planted tiny dataset for ``cfg`` below ``root``.

    ``cfg`` is the config ``tools/test.py`` will run, with
    ``test_dataloader.dataset.data_root`` already pointing below ``root``
    (see :func:`planted_data_root`). Without ``model`` the model is built
    from ``cfg.model`` (seeded); either way it is given the dataset's
    classes as ``DatasetVocabularyHook`` does, its weights are saved to
    ``checkpoint`` (unless None: the tool then reads them elsewhere, e.g.
    the trained checkpoint ``model`` was loaded from) and it predicts every
    image. With ``tie_rtol`` the near ties of each image (:func:`near_ties`)
    are ignored in its ground truth as well.
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
    if model is None:
        torch.manual_seed(seed)
        model = MODELS.build(cfg.model)
    model.eval()
    classes = DATASETS.get(cfg.test_dataloader.dataset.type).METAINFO[
        'classes']
    if hasattr(model, 'set_dataset_classes'):
        model.set_dataset_classes(classes)
    if checkpoint is not None:
        torch.save({'state_dict': model.state_dict()}, str(checkpoint))
    layout = LAYOUTS[benchmark]
    scale = pipeline_resize_scale(cfg)
    planted = PlantedDataset(str(data_root),
                             None if checkpoint is None else str(checkpoint),
                             len(classes), [], [])
    for index, sample_id in enumerate(sample_ids(layout, 'val', num_images)):
        image = data_root / layout.img_dirs[0] / f'{sample_id}' \
            f'{layout.img_suffix}'
        result = predict_sample(model, image, scale,
                                cfg.model.data_preprocessor)
        prediction = result.pred_sem_seg.data[0].cpu().numpy().astype(
            np.int64)
        if prediction.shape != IMAGE_SIZE:
            raise AssertionError(
                f'{image}: prediction of shape {prediction.shape}, not the '
                f'original {IMAGE_SIZE}')
        truth = corrupt(prediction, len(classes)) if (
            corrupted and index > 0) else uncorrupted(prediction,
                                                      len(classes))
        ties = np.zeros(IMAGE_SIZE, dtype=bool) if tie_rtol is None else \
            near_ties(result.seg_logits.data, tie_rtol)
        truth[ties] = IGNORE
        _write_label(
            data_root / layout.seg_dirs[0] / f'{sample_id}{layout.seg_suffix}',
            encode_labels(truth, benchmark), layout)
        planted.predictions.append(prediction)
        planted.ground_truths.append(truth)
        planted.image_paths.append(str(image))
        planted.ties.append(ties)
    return planted


def load_model(cfg, checkpoint: Union[str, Path]):
    """``cfg.model`` built with the weights of ``checkpoint`` (a file saved
    by ``tools/train.py``), loaded strictly, in eval mode."""
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmseg.registry import MODELS

    import mmseg_ovss  # noqa: F401  (registers the components)
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    load_checkpoint(model, str(checkpoint), map_location='cpu', strict=True)
    return model.eval()


def runner_model(cfg):
    """The model ``tools/test.py`` evaluates when given no checkpoint: built
    by mmengine's ``Runner`` from ``cfg`` (seeded by ``cfg.randomness``;
    SyncBN reverted as in a one-process run), in eval mode."""
    from mmengine.runner import Runner

    import mmseg_ovss  # noqa: F401  (registers the components)
    if (cfg.get('randomness') or {}).get('seed') is None:
        raise OVSSConfigError(
            'runner_model: the config sets no randomness.seed, so every run '
            'draws other weights; add randomness = dict(seed=0) to the config '
            '(or --cfg-options +randomness.seed=0)')
    return Runner.from_cfg(cfg).model.eval()


def planted_data_root(benchmark: str, root: Union[str, Path]) -> str:
    """Where :func:`plant_ground_truth` writes ``benchmark`` below ``root``
    (the value of ``test_dataloader.dataset.data_root``)."""
    return str(Path(root) / LAYOUTS[benchmark].root)


def assert_reported(metrics, expected: Dict[str, float],
                    num_classes: int) -> None:
    """Every metric of ``expected`` (:func:`expected_metrics`) is what the
    tool reported, within :func:`reported_tolerance`."""
    tol = reported_tolerance(num_classes)
    for key, value in expected.items():
        if key not in metrics:
            raise AssertionError(
                f'the tool reported no {key!r}; it reported {sorted(metrics)}')
        if not abs(float(metrics[key]) - value) <= tol:
            raise AssertionError(
                f'{key}: the tool reported {float(metrics[key])}, counted by '
                f'hand {value} (tolerance {tol}); all reported: '
                f'{dict(metrics)}, counted: {expected}')


def run_planted(config: Union[str, Path], tmp_path: Union[str, Path],
                options: Sequence[str] = (), corrupted: bool = True,
                seed: int = 0):
    """Plant a tiny dataset for ``config`` and run ``tools/test.py`` on it.

    The tool's command line is ``CONFIG CHECKPOINT --work-dir
    TMP/work --cfg-options *options test_dataloader.dataset.data_root=...``
    (``options``: e.g. the settings that make the config tiny). The dataset
    is planted (:func:`plant_ground_truth`) below ``tmp_path / 'data'`` from
    the very config the tool runs, its model saved to ``tmp_path /
    'planted.pth'``, the checkpoint the tool evaluates.

    Returns:
        tuple: (the metrics the tool returned, :class:`PlantedDataset`).
    """
    from mmengine.config import Config

    from .tools import load_tool, run_tool
    tmp_path = Path(tmp_path)
    cfg = Config.fromfile(str(config))
    data_root = planted_data_root(benchmark_of(cfg), tmp_path / 'data')
    argv = [str(config), '--work-dir', str(tmp_path / 'work'),
            '--cfg-options', *[str(o) for o in options],
            f'test_dataloader.dataset.data_root={data_root}']
    tool = load_tool('test')
    run_cfg = tool.build_cfg(tool.parse_args(argv))
    planted = plant_ground_truth(run_cfg, tmp_path / 'data',
                                 tmp_path / 'planted.pth',
                                 corrupted=corrupted, seed=seed)
    metrics = run_tool('test', [argv[0], planted.checkpoint, *argv[1:]])
    return metrics, planted
