# GEM: self-self attention path over the last 6 blocks (adaptive
# temperature, one extra iteration); short side 448, 448/224 windows.
_base_ = ['./clip_dense.py']
# Position embeddings: resized by size with antialias=True, as GEM's code.
model = dict(
    backbone=dict(
        pos_interp='size_antialias',
        dense_strategy=dict(type='GEM', num_blocks=6, iterations=1, temperature=None)),
    decode_head=dict(logit_scale=40.0),
    test_cfg=dict(mode='slide', crop_size=(448, 448), stride=(224, 224)))
