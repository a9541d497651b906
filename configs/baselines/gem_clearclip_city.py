# GEM as the ClearCLIP repository runs it, on Cityscapes: only the last
# block's self-self attention output, no residual (ignore_residual=True in
# mc-lan/ClearCLIP clearclip_segmentor.py) and tau 50; vocabulary and
# prob_thd as clearclip_city.py (that repository's
# configs/cfg_city_scapes.py).
_base_ = ['./gem_city.py']
model = dict(
    backbone=dict(dense_strategy=dict(residual=False)),
    decode_head=dict(logit_scale=50.0),
)
