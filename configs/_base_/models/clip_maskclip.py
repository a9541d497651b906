# MaskCLIP (official: last-block value embeddings, no residual, no FFN).
# Resolution as in the ClearCLIP repository: short side 448, 448/224 windows.
# FreeCP's variant keeps the FFN:
# backbone=dict(dense_strategy=dict(type='MaskCLIP', ffn=True)).
_base_ = ['./clip_dense.py']
# Position embeddings: DINO-style scale-factor interpolation as in the
# SCLIP, NACLIP, ClearCLIP and ProxyCLIP code (MaskCLIP: ClearCLIP's code).
model = dict(
    backbone=dict(
        pos_interp='dino',
        dense_strategy=dict(type='MaskCLIP', residual=False, ffn=False)),
    decode_head=dict(logit_scale=50.0),
    test_cfg=dict(mode='slide', crop_size=(448, 448), stride=(224, 224)))
