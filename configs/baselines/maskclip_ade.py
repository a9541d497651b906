# MaskCLIP on ADE20K-150 (Zhou et al., ECCV 2022) at the resolution mc-lan/ClearCLIP runs it (configs/cfg_ade20k.py, model_type='MaskCLIP').
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
    text=dict(class_names='data/class_names/reference/ade150.txt')
)
