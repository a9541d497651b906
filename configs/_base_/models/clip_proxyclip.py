# ProxyCLIP: proxy attention from DINO ViT-B/8 features (beta 1.2, gamma 3)
# on CLIP's last-block values; short side 336, 336/112 windows, tau 40.
# The DINO weights come from a local file only: set OVSS_DINO_CHECKPOINT or
# --cfg-options
# model.backbone.dense_strategy.vfm_checkpoint=/path/dino_vitbase8_pretrain.pth
_base_ = ['./clip_dense.py']
# Position embeddings: DINO-style scale-factor interpolation as in the
# SCLIP, NACLIP, ClearCLIP and ProxyCLIP code (MaskCLIP: ClearCLIP's code).
model = dict(
    backbone=dict(
        pos_interp='dino',
        dense_strategy=dict(
            type='ProxyCLIP',
            vfm_model='vit_base_patch8_224',
            vfm_checkpoint='{{$OVSS_DINO_CHECKPOINT:checkpoints/dino_vitbase8_pretrain.pth}}',
            beta=1.2,
            gamma=3.0)),
    decode_head=dict(logit_scale=40.0),
    test_cfg=dict(mode='slide', crop_size=(336, 336), stride=(112, 112)))
