# FreeCP + NACLIP on COCO-Stuff 171 (FreeCP paper Sec. 4.2, Eqs. 5 and 7; chenqi1126/FreeCP configs/cfg_coco_stuff164k.py: short side 448, 384/112
# windows, T_rp 0.05, T_ap 0.7; no PAMR, no prob_thd: the background is 1 - max).
# NACLIP without PAMR (FreeCP uses no post-processing).
_base_ = [
    '../_base_/models/clip_naclip.py',
    '../_base_/datasets/coco_stuff171.py',
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 448), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
train_dataloader = None  # training-free
model = dict(
    # FreeCP stores its own purified maps (no NACLIP renormalisation)
    seg_logits=dict(renormalize=False),
    pamr=None,
    decode_head=dict(
        _delete_=True,
        type='FreeCPHead',
        rp_threshold=0.05,
        ap_threshold=0.7,
        descriptions='data/descriptions/coco_stuff171.json',
    ),
    text_encoder=dict(templates='openai'),
    text=dict(class_names='data/class_names/reference/coco_stuff171.txt', background_class='auto'),
    prob_thd=0.0,
    area_thd=None,
    test_cfg=dict(mode='slide', crop_size=(384, 384), stride=(112, 112)))
