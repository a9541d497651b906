"""Configs of tiny registered mmseg models on the benchmark dataset bases.

They exercise the tools, runners and datasets end to end in seconds: a
SegFormer (MiT backbone) of width 8 with its all-MLP head.
"""
from typing import Optional

from mmseg_ovss.utils.paths import find_resource

_TEMPLATE = """
_base_ = [
    '{configs}/_base_/datasets/{dataset}.py',
    '{configs}/_base_/default_runtime.py',
]
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val={seg_pad_val},
        size={crop}),
    backbone=dict(
        type='MixVisionTransformer', in_channels=3, embed_dims=8,
        num_stages=4, num_layers=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
        patch_sizes=[7, 3, 3, 3], sr_ratios=[8, 4, 2, 1],
        out_indices=(0, 1, 2, 3), mlp_ratio=2, qkv_bias=True,
        drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0),
    decode_head=dict(
        type='SegformerHead', in_channels=[8, 8, 8, 8], in_index=[0, 1, 2, 3],
        channels=8, dropout_ratio=0.0, num_classes={num_classes},
        ignore_index={ignore_index}, norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                         loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 48), keep_ratio=True),
    {load_annotations},
    dict(type='PackSegInputs'),
]
test_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                       dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
"""

_TRAIN = """
train_pipeline = [
    dict(type='LoadImageFromFile'),
    {load_annotations},
    dict(type='RandomResize', scale=(96, 48), ratio_range=(0.75, 1.25),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size={crop}, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(pipeline=train_pipeline))
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999),
                   weight_decay=0.01))
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=0, end={max_iters},
         by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters={max_iters},
                 val_interval={max_iters})
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False,
                    interval={ckpt_interval}, max_keep_ckpts={max_keep}),
    visualization=dict(type='SegVisualizationHook'))
randomness = dict(seed=0)
"""
_NAN_LOSS = """
custom_imports = dict(imports=['mmseg_ovss', 'mmseg_ovss.testing.hooks'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='NaNWeightsBeforeIterHook', at_iter={at_iter})]
"""


def tiny_segformer_config(dataset: str, num_classes: int,
                          load_annotations: str,
                          ignore_index: int = 255,
                          train_iters: Optional[int] = None,
                          checkpoint_interval: int = 1,
                          crop: int = 32,
                          max_keep_ckpts: int = -1,
                          nan_loss_at_iter: Optional[int] = None) -> str:
    """Config text of a tiny SegFormer on a dataset base config.

    The ``_base_`` files, ``configs/_base_/datasets/<dataset>.py`` and the
    default runtime, are the package's shipped configs
    (``find_resource('configs')``: the checkout's, or the installed copy
    under ``mmseg_ovss/.mim/``), named by absolute path.

    ``load_annotations`` is the annotation-loading transform of the dataset
    base (a dict literal), reused so wide (uint16) labels load the same way.
    With ``train_iters`` the config also trains (iteration based), saving
    a checkpoint every ``checkpoint_interval`` iterations and keeping the
    last ``max_keep_ckpts`` (-1: all). With ``nan_loss_at_iter`` one weight
    turns NaN before that (1-based) iteration, so its loss is NaN
    (``NaNWeightsBeforeIterHook``).
    """
    text = _TEMPLATE.format(
        configs=find_resource('configs').as_posix(), dataset=dataset,
        num_classes=num_classes, ignore_index=ignore_index,
        seg_pad_val=ignore_index,
        load_annotations=load_annotations, crop=(crop, crop))
    if train_iters is not None:
        text += _TRAIN.format(
            load_annotations=load_annotations, crop=(crop, crop),
            max_iters=train_iters, ckpt_interval=checkpoint_interval,
            max_keep=max_keep_ckpts)
    if nan_loss_at_iter is not None:
        text += _NAN_LOSS.format(at_iter=nan_loss_at_iter)
    return text
