"""Outputs of a config's model on fixed random weights and fixed images.

They pin what the training-free segmentors predict across a refactor
(e.g. rebasing the segmentors on new CLIP modules must give the same
outputs): ``tools/dev/record_reference_outputs.py`` records them with
the code before the change, ``tests/test_reference_outputs.py`` recomputes
them with the code after it. Only public, stable entry points are used
(``Config.fromfile``, ``MODELS.build``, ``set_dataset_classes``, the
model's ``data_preprocessor`` and ``predict``), so the same function runs
on both.

The model is the config's with the tiny random CLIP of
:mod:`mmseg_ovss.testing.tiny_clip` (seeded: the same weights in every
process), in fp32. The images are two seeded synthetic colour images, not
multiples of the patch size, padded together in one batch; the second is
predicted at another ``ori_shape``, as after a test pipeline's ``Resize``.
The labels and the stored ``seg_logits`` are kept at a fixed sample of
pixels.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

#: The weights of every config: the tiny random CLIP, whatever the config
#: names (``--cfg-options`` keys of today's and the rebased segmentors).
TINY_CLIP_OPTIONS = {
    'model.clip.model_name': 'ovss-tiny-ViT-16',
    'model.clip.pretrained': None,
    'model.clip.random_init': True,
    'model.clip.checkpoint': None,
}
#: (img_shape, ori_shape) of the two images: the first is predicted at its
#: own size, the second (padded to the first's size in the batch) at a
#: larger one; no side is a multiple of 16, the first needs 2 x 2 windows
#: of 224 / 112 and is one whole window of 448.
IMAGE_SHAPES = (((232, 336), (232, 336)), ((200, 264), (250, 330)))
IMAGE_SEED = 2024
#: Pixels per image whose label and top-2 scores are recorded.
NUM_PIXELS = 256
#: The first pixels of the sample also record the scores of every class.
NUM_FULL_PIXELS = 16
PIXEL_SEED = 7
#: Strategies whose weights come from a local file only (ProxyCLIP's DINO
#: ViT-B/8): configs using them are not pinned.
FILE_ONLY_STRATEGIES = ('ProxyCLIP', 'ProxyCLIPStrategy')


def reference_images(shapes=IMAGE_SHAPES,
                     seed: int = IMAGE_SEED) -> List[np.ndarray]:
    """Synthetic (H, W, 3) uint8 BGR images: random colour blocks of three
    sizes plus noise, so that regions differ. Integer arithmetic only: the
    same bytes on every machine."""
    rng = np.random.default_rng(seed)
    images = []
    for (height, width), _ in shapes:
        image = np.zeros((height, width, 3), np.int64)
        for block in (56, 24, 8):
            rows, cols = -(-height // block), -(-width // block)
            colours = rng.integers(0, 86, (rows, cols, 3))
            image += np.kron(colours, np.ones((block, block, 1), np.int64)
                             )[:height, :width]
        image += rng.integers(-12, 13, (height, width, 3))
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


def sample_pixels(shapes=IMAGE_SHAPES, num: int = NUM_PIXELS,
                  seed: int = PIXEL_SEED) -> np.ndarray:
    """(images, num) flat indices into each image's ``ori_shape``, drawn
    without replacement."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(ori[0] * ori[1], num, replace=False)
                     for _, ori in shapes]).astype(np.int64)


def _types_in(node) -> set:
    """Every ``type`` value of the dicts nested in a config node."""
    if isinstance(node, dict):
        found = {node['type']} if isinstance(node.get('type'), str) else set()
        return found.union(*(_types_in(v) for v in node.values()))
    if isinstance(node, (list, tuple)):
        return set().union(*(_types_in(v) for v in node))
    return set()


#: The description files as they were when the outputs were recorded
#: (``data/descriptions/`` has since dropped their re-phrased sentences);
#: a pinned config reads these, so its pin tests the code, not the data.
RECORDED_DESCRIPTIONS = (Path(__file__).resolve().parents[2] / 'tests' /
                         'data' / 'reference_outputs' /
                         'descriptions_as_recorded')


def _recorded_descriptions(node) -> None:
    """Point every ``descriptions='data/descriptions/<f>.json'`` of a model
    config at :data:`RECORDED_DESCRIPTIONS` (when that copy exists)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == 'descriptions' and isinstance(value, str) and \
                    value.startswith('data/descriptions/'):
                recorded = RECORDED_DESCRIPTIONS / Path(value).name
                if recorded.is_file():
                    node[key] = str(recorded)
            else:
                _recorded_descriptions(value)
    elif isinstance(node, (list, tuple)):
        for item in node:
            _recorded_descriptions(item)


def load_reference_config(config_path: Union[str, Path]):
    """The config with the tiny random CLIP (:data:`TINY_CLIP_OPTIONS`) and
    the description files as recorded (:data:`RECORDED_DESCRIPTIONS`)."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(config_path))
    cfg.merge_from_dict(TINY_CLIP_OPTIONS)
    _recorded_descriptions(cfg.model)
    return cfg


def unpinned_reason(cfg) -> Optional[str]:
    """Why a config cannot be pinned here, or None."""
    used = _types_in(cfg.model) & set(FILE_ONLY_STRATEGIES)
    if used:
        return (f'{sorted(used)[0]}: the vision foundation model (DINO '
                'ViT-B/8) loads from a local weights file only, which this '
                'machine does not have')
    return None


def dataset_classes(cfg) -> Sequence[str]:
    """The test dataset's classes: its config ``metainfo`` or its class's
    ``METAINFO``."""
    from mmseg.registry import DATASETS
    dataset = cfg.test_dataloader.dataset
    classes = (dataset.get('metainfo') or {}).get('classes')
    if classes is None:
        classes = DATASETS.get(dataset.type).METAINFO['classes']
    return list(classes)


def _batch(images: List[np.ndarray], shapes) -> dict:
    """What a test data loader gives ``test_step``: uint8 (3, H, W) inputs
    and data samples with ``PackSegInputs``'s meta keys."""
    from mmseg.structures import SegDataSample
    inputs, samples = [], []
    for index, (image, ((height, width), ori)) in enumerate(
            zip(images, shapes)):
        inputs.append(torch.from_numpy(
            np.ascontiguousarray(image.transpose(2, 0, 1))))
        samples.append(SegDataSample(metainfo=dict(
            img_path=f'reference_{index}.png', seg_map_path=None,
            ori_shape=tuple(ori), img_shape=(height, width),
            pad_shape=(height, width),
            scale_factor=(width / ori[1], height / ori[0]),
            flip=False, flip_direction=None, reduce_zero_label=False)))
    return dict(inputs=inputs, data_samples=samples)


def reference_outputs(config_path: Union[str, Path],
                      model=None) -> Dict[str, np.ndarray]:
    """Predict the two reference images with ``config_path``'s model.

    Returns, for I images and P = :data:`NUM_PIXELS` pixels of each:
    ``pixels`` (I, P) flat indices into each image's ``ori_shape``,
    ``labels`` (I, P) the predicted labels there, ``scores`` (I, P, K) the
    stored ``seg_logits`` of the K classes there, ``prob_thd`` (0-d, the
    config's), ``ori_shapes`` (I, 2). ``model``: a model built from this
    config already, to reuse.
    """
    import mmseg_ovss  # noqa: F401  (registers the package's modules)
    import mmseg_ovss.testing.tiny_clip  # noqa: F401  (the tiny CLIPs)
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    cfg = load_reference_config(config_path)
    init_default_scope('mmseg')
    if model is None:
        model = MODELS.build(cfg.model)
    model.eval()
    model.set_dataset_classes(dataset_classes(cfg))
    shapes = IMAGE_SHAPES
    data = _batch(reference_images(shapes), shapes)
    with torch.no_grad():
        data = model.data_preprocessor(data, False)
        samples = model.predict(data['inputs'], data['data_samples'])
    pixels = sample_pixels(shapes)
    labels, scores = [], []
    for sample, flat, (_, ori) in zip(samples, pixels, shapes):
        label_map = sample.pred_sem_seg.data[0]
        logits = sample.seg_logits
        stride = logits.metainfo.get('stride', 1)
        if tuple(label_map.shape) != tuple(ori) or stride != 1 or tuple(
                logits.data.shape[1:]) != tuple(ori):
            raise AssertionError(
                f'{config_path}: labels of shape {tuple(label_map.shape)}, '
                f'seg_logits {tuple(logits.data.shape)} (stride {stride}) '
                f'for an image of ori_shape {ori}')
        index = torch.from_numpy(flat)
        labels.append(label_map.flatten()[index].numpy())
        scores.append(logits.data.float().flatten(1)[:, index].T.numpy())
    return dict(pixels=pixels, labels=np.stack(labels).astype(np.int64),
                scores=np.stack(scores),
                prob_thd=np.array(float(cfg.model.get('prob_thd', 0.0))),
                ori_shapes=np.array([ori for _, ori in shapes]))


def compact(outputs: Dict[str, np.ndarray],
            num_full: int = NUM_FULL_PIXELS) -> Dict[str, np.ndarray]:
    """What is recorded of :func:`reference_outputs` for one config:
    ``labels`` (int16), ``prob_thd``, ``num_classes``, the scores of every
    class at the first ``num_full`` pixels (``scores``) and the two highest
    scores and their classes at every pixel (``top_scores``,
    ``top_classes``: (I, P, 2), the highest first). ``pixels`` and
    ``ori_shapes`` are the same for every config (:func:`sample_pixels`,
    :data:`IMAGE_SHAPES`) and recorded once."""
    scores = torch.from_numpy(outputs['scores'])
    top = scores.topk(2, dim=-1)
    return dict(labels=outputs['labels'].astype(np.int16),
                prob_thd=outputs['prob_thd'],
                num_classes=np.array(scores.shape[-1]),
                scores=outputs['scores'][:, :num_full],
                top_scores=top.values.numpy(),
                top_classes=top.indices.numpy().astype(np.int16))


def config_id(config_path: Union[str, Path],
              configs_root: Union[str, Path]) -> str:
    """``'baselines/sclip_voc21'``: the config's path under ``configs/``
    without ``.py``."""
    return Path(config_path).resolve().relative_to(
        Path(configs_root).resolve()).with_suffix('').as_posix()


def read_reference(npz, config: str) -> Dict[str, np.ndarray]:
    """The arrays recorded for ``config`` (a :func:`config_id`, or
    ``'__meta__'``) in an opened ``.npz`` of the recorder."""
    prefix = f'{config}/'
    return {name[len(prefix):]: npz[name] for name in npz.files
            if name.startswith(prefix)}


__all__ = ['FILE_ONLY_STRATEGIES', 'IMAGE_SHAPES', 'NUM_FULL_PIXELS',
           'NUM_PIXELS', 'TINY_CLIP_OPTIONS', 'compact', 'config_id',
           'dataset_classes', 'load_reference_config', 'read_reference',
           'reference_images', 'reference_outputs', 'sample_pixels',
           'unpinned_reason']
