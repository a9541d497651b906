# FreeCP + ClearCLIP on COCO-Object (FreeCP paper Sec. 4.2, Eqs. 5 and 7; chenqi1126/FreeCP configs/cfg_coco_object.py: short side 448, 384/112
# windows, T_rp 0.15, T_ap 0.8; no PAMR, no prob_thd: the background is 1 - max).
# ClearCLIP as published.
_base_ = [
    '../_base_/models/clip_clearclip.py',
    '../_base_/datasets/coco_object.py',
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
    decode_head=dict(
        _delete_=True,
        type='FreeCPHead',
        rp_threshold=0.15,
        ap_threshold=0.8,
        descriptions='data/descriptions/coco_object.json',
    ),
    text_encoder=dict(templates='openai'),
    text=dict(class_names='data/class_names/reference/clearclip_coco_object.txt', background_class=0),
    prob_thd=0.0,
    area_thd=None,
    test_cfg=dict(mode='slide', crop_size=(384, 384), stride=(112, 112)))
