# SCLIP (official: correlative self-attention, residual and FFN kept).
# Short side 336, 224/112 windows, tau 40 (65 VOC21, 50 PC60/Object).
# FreeCP's variant drops the residual: strategy=dict(residual=False).
_base_ = ['./clip_dense.py']
model = dict(
    strategy=dict(type='SCLIP', residual=True, ffn=True),
    decode_head=dict(logit_scale=40.0),
    test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)))
