"""Tiny ZegCLIP / CLIP-RC models for tests.

``tiny_cliprc_cfg('cliprc')`` and ``tiny_cliprc_cfg('zegclip')`` are model
configs of the real components (``CLIPRCSegmentor``, ``OpenCLIPViT`` with
``DeepVisualPrompts``, ``OpenCLIPTextEncoder``, ``CLIPRCHead``) on the
random ``ovss-tiny-ViT-16`` CLIP (6 blocks, width 64, patch 16, 32-d
embeddings): 64 px images give a 4 x 4 patch grid, so 4 region tokens cover
2 x 2 patches each. ``tiny_batch`` makes normalised inputs and data samples
with random labels.
"""
import copy
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.structures import PixelData
from torch import Tensor

from mmseg.structures import SegDataSample

from . import tiny_clip  # noqa: F401  (registers the tiny CLIPs)

TINY_CLIP = dict(model_name='ovss-tiny-ViT-16', pretrained=None,
                 random_init=True)
TINY_EMBED_DIMS = 32
TINY_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle')

IMAGENET_PREPROCESSOR = dict(
    type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
    seg_pad_val=255)


def _merge(base: dict, overrides: Optional[dict]) -> dict:
    out = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and \
                '_delete_' not in value:
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny_cliprc_cfg(variant: str = 'cliprc',
                    num_region_tokens: int = 4,
                    num_prompts: int = 2,
                    class_names: Sequence[str] = TINY_CLASSES,
                    head: Optional[dict] = None,
                    **overrides) -> dict:
    """A ``CLIPRCSegmentor`` config on the tiny CLIP.

    Args:
        variant: ``'cliprc'`` (region bridge, RAM, bidirectional decoder,
            recovery) or ``'zegclip'`` (none of them, one-way decoder with
            the attention-logit mask).
        num_region_tokens: M for CLIP-RC.
        num_prompts: K deep visual prompts per block.
        class_names: the vocabulary before any hook sets one.
        head: keys merged into ``decode_head``.
        **overrides: keys merged into the model config.
    """
    if variant not in ('cliprc', 'zegclip'):
        raise ValueError(f'variant {variant!r}: cliprc or zegclip')
    decode_head = dict(
        type='CLIPRCHead', in_channels=TINY_EMBED_DIMS,
        embed_dims=TINY_EMBED_DIMS,
        region_alignment=dict(use_cls=True, use_rlb=True,
                              upsample='bilinear'),
        decoder=dict(num_layers=3, num_heads=4, bidirectional=True,
                     mask='dot'),
        recovery=dict(num_layers=1, loss='l1', loss_weight=1.0),
        loss_decode=dict(type='SigmoidFocalDiceLoss'))
    region_bridge = dict(type='RegionLevelBridge',
                         num_tokens=num_region_tokens, update=False,
                         patches_see_region=True)
    if variant == 'zegclip':
        region_bridge = None
        decode_head.update(region_alignment=None, recovery=None,
                           decoder=dict(num_layers=3, num_heads=4,
                                        bidirectional=False,
                                        mask='attention'))
    cfg = dict(
        type='CLIPRCSegmentor',
        clip=dict(TINY_CLIP),
        backbone=dict(type='OpenCLIPViT', drop_path_rate=0.1,
                      prompts=dict(type='DeepVisualPrompts',
                                   num_tokens=num_prompts)),
        text_encoder=dict(type='OpenCLIPTextEncoder', templates='single'),
        region_bridge=region_bridge,
        decode_head=_merge(decode_head, head),
        class_names=list(class_names),
        seen_score_offset=0.1,
        data_preprocessor=dict(IMAGENET_PREPROCESSOR),
        test_cfg=dict(mode='whole'))
    return _merge(cfg, overrides)


def build_tiny_cliprc(variant: str = 'cliprc', seed: int = 0, **kwargs):
    """Build :func:`tiny_cliprc_cfg` (mmseg scope) with torch seeded."""
    from mmengine.registry import init_default_scope

    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    torch.manual_seed(seed)
    return MODELS.build(tiny_cliprc_cfg(variant, **kwargs))


def tiny_batch(num_images: int = 2, size: Tuple[int, int] = (64, 64),
               num_classes: int = len(TINY_CLASSES), ignore_index: int = 255,
               seed: int = 0) -> Tuple[Tensor, List[SegDataSample]]:
    """Normalised (B, 3, H, W) inputs and data samples whose labels are
    random blocks of 16 x 16 pixels (some at ``ignore_index``)."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_images, 3, *size, generator=gen)
    h, w = size
    samples = []
    for _ in range(num_images):
        cells = torch.randint(0, num_classes + 1, (1, h // 16, w // 16),
                              generator=gen)
        cells[cells == num_classes] = ignore_index
        labels = cells.repeat_interleave(16, 1).repeat_interleave(16, 2)
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=labels.long())
        sample.set_metainfo(dict(img_shape=size, ori_shape=size,
                                 pad_shape=size))
        samples.append(sample)
    return inputs, samples


def make_tiny_voc_aug(root, num_images: int = 2, size: int = 64):
    """A tiny VOC 2012 layout (``make_tiny_dataset('voc20', ...)``) with the
    SBD training files the ZegCLIP / CLIP-RC VOC configs read
    (``ImageSets/Segmentation/aug.txt`` and ``SegmentationClassAug``, here
    copies of the train split); returns the dataset directory."""
    import shutil
    from pathlib import Path

    from .tiny_datasets import make_tiny_dataset
    data = Path(make_tiny_dataset('voc20', root, num_images=num_images,
                                  image_size=(size, size)))
    ids = (data / 'ImageSets/Segmentation/train.txt').read_text()
    (data / 'ImageSets/Segmentation/aug.txt').write_text(ids)
    aug = data / 'SegmentationClassAug'
    aug.mkdir(exist_ok=True)
    for label in (data / 'SegmentationClass').iterdir():
        shutil.copy(label, aug / label.name)
    return data
