# FreeCP + MaskCLIP on ADE20K-150 (FreeCP paper Sec. 4.2, Eqs. 5 and 7; chenqi1126/FreeCP configs/cfg_ade20k.py: short side 448, 384/112
# windows, T_rp 0.05, T_ap 0.7; no PAMR, no prob_thd: the background is 1 - max).
# MaskCLIP as the authors ran it: value embeddings with the FFN kept
# (official MaskCLIP: ffn=False).
_base_ = [
    '../_base_/models/clip_maskclip.py',
    '../_base_/datasets/ade150.py',
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
    backbone=dict(dense_strategy=dict(ffn=True)),
    decode_head=dict(
        _delete_=True,
        type='FreeCPHead',
        rp_threshold=0.05,
        ap_threshold=0.7,
        descriptions='data/descriptions/ade150.json',
    ),
    text_encoder=dict(templates='openai'),
    text=dict(class_names='data/class_names/reference/ade150.txt', background_class='auto'),
    prob_thd=0.0,
    area_thd=None,
    test_cfg=dict(mode='slide', crop_size=(384, 384), stride=(112, 112)))
