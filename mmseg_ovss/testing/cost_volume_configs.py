"""Tiny versions of the shipped CAT-Seg / DCP-CLIP configs, for tests.

:func:`write_tiny_config` writes a config file that inherits a REAL shipped
config (``configs/catseg/...``, ``configs/dcpclip/...``) and overrides only
sizes, weights and iteration counts: the tiny random CLIP
``ovss-tiny-ViT-16`` (6 blocks, ViT width 64, joint width 32, patch 16:
a 4x4 grid at 64 px, as CAT-Seg's 24x24 at 384), three prompt templates
instead of 80, a head of width 32 with window 2, 64 px crops, a few
iterations with no worker processes. Everything else (the segmentor, the
head and its DCP-CLIP parts, the losses, the optimiser with its parameter
groups and gradient clipping, the schedule, the pipelines' transforms, the
vocabulary hook) is the shipped config's.

:data:`TINY_ENSEMBLE_OPTIONS` are ``--cfg-options`` that shrink CAT-Seg's
window + whole-image test ensemble to the tiny size (96 px image, 64 px
windows at stride 32); they are options because ``test_cfg.kernel`` /
``ensemble_size`` / ``overlap`` are not keys the config-key check knows.
"""
from pathlib import Path
from typing import Optional, Union


#: Three prompt templates (the tiny head's ``num_templates``).
TINY_TEMPLATES = ('a photo of a {}.', 'a picture of a {}.',
                  'a rendering of a {}.')
TINY_CROP = 64

#: The test ensemble at tiny size (see the module docstring).
TINY_ENSEMBLE_OPTIONS = {
    '+model.test_cfg.kernel': TINY_CROP,
    '+model.test_cfg.overlap': 0.5,
    '+model.test_cfg.ensemble_size': (96, 96),
}

_MODEL = """
custom_imports = dict(
    imports=['mmseg_ovss', 'mmseg_ovss.testing.tiny_clip'],
    allow_failed_imports=False)
model = dict(
    data_preprocessor=dict(size=({crop}, {crop})),
    clip=dict(model_name='ovss-tiny-ViT-16', pretrained=None,
              checkpoint=None, random_init=True),
    text_encoder=dict(templates={templates!r}),
    guidance_layers=(1, 3),{model_extra}
    clip_resolution=({crop}, {crop}),
    decode_head=dict(
        in_channels=32,
        channels=32,
        num_templates={num_templates},{aggregator}
        pad_len=8,
        decoder={decoder}{head_extra}))
"""
#: CAT-Seg's upsampling decoder for the tiny ViT (width 64)
_CATSEG_DECODER = """dict(
            guidance_in_channels=64, channels=(32, 16),
            guidance_channels=(16, 8), guidance_proj_channels=(8, 4))"""
#: CAT-Seg's aggregator at the tiny size (DCP-CLIP has none)
_CATSEG_AGGREGATOR = """
        appearance_guidance_channels=16,
        text_guidance_channels=16,
        aggregator=dict(spatial=dict(window_size=2)),"""
#: DCP-CLIP's spatial enhanced decoder at the tiny size: encoder features
#: of widths (joint 32, ViT 64, ViT 64), window 2 on the 4x4 grid
_DCP_DECODER = """dict(window_size=2, encoder_channels=(32, 64, 64))"""

#: the DCP-CLIP parts at the tiny size
_DCP_HEAD = """,
        alignment=dict(ca_heads=4, sa_heads=4)"""
_DCP_MODEL = """
    attention_layers=(1, 3),"""

_TRAIN = """
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadCheckedAnnotations'),
    {resize},
    {crop_flip}
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False)
test_dataloader = dict(num_workers=0, persistent_workers=False)
total_batch_size = {batch}
train_cfg = dict(max_iters={iters}, val_interval={iters})
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max={iters}, eta_min=0.0, begin=0,
         end={iters}, by_epoch=False)
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False,
                    interval={checkpoint_interval}, max_keep_ckpts=10,
                    save_last=True))
randomness = dict(seed=0)
"""

_TEST = """
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(192, 64), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(num_workers=0, persistent_workers=False,
                       dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
"""


def write_tiny_config(config: Union[str, Path], out: Union[str, Path],
                      iters: int = 2, batch: int = 2,
                      checkpoint_interval: Optional[int] = None,
                      deterministic: bool = False, extra: str = '') -> Path:
    """Write ``out``: ``config`` (a shipped config path) at tiny size.

    Args:
        iters: training iterations (schedule and loop).
        batch: ``total_batch_size``.
        checkpoint_interval: iterations between checkpoints (default
            ``iters``).
        deterministic: a fixed 64 x 64 resize instead of the random crop
            and flip (and the photometric distortion), so that runs on one
            and two processes load the same pixels.
        extra: config text appended.
    """
    from mmengine.config import Config
    config = Path(config).resolve()
    cfg = Config.fromfile(str(config))
    dcp = cfg.model.decode_head.get('type') == 'DCPCLIPHead'
    text = f"_base_ = ['{config.as_posix()}']\n"
    text += _MODEL.format(
        crop=TINY_CROP, templates=list(TINY_TEMPLATES),
        num_templates=len(TINY_TEMPLATES),
        aggregator='' if dcp else _CATSEG_AGGREGATOR,
        decoder=_DCP_DECODER if dcp else _CATSEG_DECODER,
        head_extra=_DCP_HEAD if dcp and cfg.model.decode_head.get(
            'alignment') is not None else '',
        model_extra=_DCP_MODEL if dcp else '')
    if cfg.get('train_dataloader') is not None:
        if deterministic:
            resize = (f"dict(type='Resize', scale=({TINY_CROP}, {TINY_CROP})"
                      ', keep_ratio=False)')
            crop_flip = ''
        else:
            resize = (f"dict(type='Resize', scale=({2 * TINY_CROP}, "
                      f'{TINY_CROP}), keep_ratio=True)')
            crop_flip = (f"dict(type='RandomCrop', crop_size=({TINY_CROP}, "
                         f'{TINY_CROP}), cat_max_ratio=1.0),\n'
                         "    dict(type='PhotoMetricDistortion'),\n"
                         "    dict(type='RandomFlip', prob=0.5),")
        text += _TRAIN.format(resize=resize, crop_flip=crop_flip,
                              batch=batch, iters=iters,
                              checkpoint_interval=checkpoint_interval or iters)
    text += _TEST + extra
    out = Path(out)
    out.write_text(text)
    return out
