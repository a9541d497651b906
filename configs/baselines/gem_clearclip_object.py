# GEM as the ClearCLIP repository runs it, on COCO-Object: only the last
# block's self-self attention output, no residual (ignore_residual=True in
# mc-lan/ClearCLIP clearclip_segmentor.py) and tau 50; vocabulary and
# prob_thd as clearclip_object.py (that repository's
# configs/cfg_coco_object.py).
_base_ = ['./gem_object.py']
model = dict(
    backbone=dict(dense_strategy=dict(residual=False)),
    decode_head=dict(logit_scale=50.0),
    # ClearCLIP's file has the single word "background": no shared synonym
    text=dict(
        class_names='data/class_names/reference/clearclip_coco_object.txt',
        shared_synonyms='error'),
    prob_thd=0.4,
)
