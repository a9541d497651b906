# NACLIP: k-k attention + Gaussian neighbourhood bias (sigma 5 patches), no
# residual, no FFN; short side 336, 224/112 windows, tau 40, PAMR (10 steps,
# dilations 8 and 16) as in the published "+PAMR" numbers.
_base_ = ['./clip_dense.py']
# Position embeddings: DINO-style scale-factor interpolation as in the
# SCLIP, NACLIP, ClearCLIP and ProxyCLIP code (MaskCLIP: ClearCLIP's code).
model = dict(
    backbone=dict(
        pos_interp='dino',
        dense_strategy=dict(type='NACLIP', sigma=5.0, residual=False, ffn=False)),
    decode_head=dict(logit_scale=40.0),
    pamr=dict(num_iter=10, dilations=(8, 16)),
    # stored seg_logits divided by their sum over classes, as
    # sinahmr/NACLIP naclip.py does (labels are unchanged)
    seg_logits=dict(renormalize=True),
    test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)))
