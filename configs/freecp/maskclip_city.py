# FreeCP + MaskCLIP on Cityscapes (chenqi1126/FreeCP configs/cfg_city_scapes.py; the FreeCP paper's Sec. 4.2 says 384 windows: short side 560, 224/112
# windows, T_rp 0.1, T_ap 0.8; no PAMR, no prob_thd: the background is 1 - max).
# MaskCLIP as the authors ran it: value embeddings with the FFN kept
# (official MaskCLIP: ffn=False).
_base_ = [
    '../_base_/models/clip_maskclip.py',
    '../_base_/datasets/cityscapes.py',
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 560), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
train_dataloader = None  # training-free
model = dict(
    backbone=dict(dense_strategy=dict(ffn=True)),
    decode_head=dict(
        _delete_=True,
        type='FreeCPHead',
        rp_threshold=0.1,
        ap_threshold=0.8,
        descriptions='data/descriptions/cityscapes.json',
    ),
    text_encoder=dict(templates='openai'),
    text=dict(class_names='data/class_names/cityscapes.txt', background_class='auto'),
    prob_thd=0.0,
    area_thd=None,
    test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)))
