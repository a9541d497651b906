# SCLIP (official: correlative self-attention, residual and FFN kept).
# Short side 336, 224/112 windows, tau 40 (65 VOC21, 50 PC60/Object).
# FreeCP's variant drops the residual:
# backbone=dict(dense_strategy=dict(residual=False)).
_base_ = ['./clip_dense.py']
# Position embeddings: DINO-style scale-factor interpolation as in the
# SCLIP, NACLIP, ClearCLIP and ProxyCLIP code (MaskCLIP: ClearCLIP's code).
model = dict(
    backbone=dict(
        pos_interp='dino',
        dense_strategy=dict(type='SCLIP', residual=True, ffn=True)),
    decode_head=dict(logit_scale=40.0),
    test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)))
