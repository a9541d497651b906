# GEM as the ClearCLIP repository runs it, on PASCAL VOC 20: only the last
# block's self-self attention output, no residual (ignore_residual=True in
# mc-lan/ClearCLIP clearclip_segmentor.py) and tau 50; vocabulary and
# prob_thd as clearclip_voc20.py (that repository's
# configs/cfg_voc20.py).
_base_ = ['./gem_voc20.py']
model = dict(
    backbone=dict(dense_strategy=dict(residual=False)),
    decode_head=dict(logit_scale=50.0),
    text=dict(class_names='data/class_names/reference/clearclip_voc20.txt'),
)
