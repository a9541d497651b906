"""Tiny CAT-Seg models for tests: the real components at toy widths.

:func:`tiny_catseg_cfg` is a ``CostVolumeSegmentor`` config on the tiny
random CLIP ``ovss-tiny-ViT-16`` (6 blocks, width 64, joint width 32, patch
16) with both towers fine-tuned on attention q/v as in CAT-Seg, three
prompt templates and a head of width 32.
"""
import copy
from typing import Optional, Sequence

#: Three prompt templates (the head's ``num_templates``).
TINY_TEMPLATES = ('a photo of a {}.', 'a picture of a {}.',
                  'a rendering of a {}.')


def tiny_catseg_head_cfg(**overrides) -> dict:
    """A ``CATSegHead`` config for the tiny CLIP (joint width 32, ViT
    width 64): d = 32, 2 aggregation layers, window 2, decoder [32, 16]."""
    cfg = dict(
        type='CATSegHead',
        in_channels=32,
        channels=32,
        num_templates=len(TINY_TEMPLATES),
        appearance_guidance_channels=16,
        text_guidance_channels=16,
        cost_embed=dict(kernel_size=7),
        aggregator=dict(
            num_layers=2,
            spatial=dict(num_heads=4, window_size=2, mlp_ratio=4),
            classwise=dict(num_heads=4, attention='linear',
                           pool_size=(2, 2), test_pool_size=(1, 1))),
        decoder=dict(guidance_in_channels=64, channels=(32, 16),
                     guidance_channels=(16, 8),
                     guidance_proj_channels=(8, 4)),
        pad_len=8,
        loss_decode=dict(type='PixelBCELoss'))
    cfg.update(overrides)
    return cfg


def tiny_catseg_cfg(class_names: Optional[Sequence[str]] = None,
                    head: Optional[dict] = None, **overrides) -> dict:
    """A tiny ``CostVolumeSegmentor`` config (pass ``class_names`` to use
    it without ``DatasetVocabularyHook``)."""
    cfg = dict(
        type='CostVolumeSegmentor',
        clip=dict(model_name='ovss-tiny-ViT-16', pretrained=None,
                  random_init=True),
        backbone=dict(freeze='attn_qv'),
        text_encoder=dict(freeze='attn_qv', templates=list(TINY_TEMPLATES)),
        decode_head=head if head is not None else tiny_catseg_head_cfg(),
        guidance_layers=(1, 3),
        clip_resolution=None,
        class_names=list(class_names) if class_names is not None else None,
        data_preprocessor=dict(
            type='SegDataPreProcessor',
            mean=[122.771, 116.746, 104.094],
            std=[68.501, 66.632, 70.323],
            bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
        train_cfg=dict(),
        test_cfg=dict(mode='whole'))
    cfg.update(copy.deepcopy(overrides))
    return cfg


def build_tiny_catseg(class_names: Sequence[str], seed: int = 0,
                      **overrides):
    """Build :func:`tiny_catseg_cfg` (head weights drawn after
    ``torch.manual_seed(seed)``; the CLIP weights have their own seed)."""
    import torch
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import mmseg_ovss.testing.tiny_clip  # noqa: F401 (registers the CLIPs)
    init_default_scope('mmseg')
    torch.manual_seed(seed)
    return MODELS.build(tiny_catseg_cfg(class_names, **overrides))
