# ClearCLIP on PASCAL VOC 21 (Lan et al., ECCV 2024): values of mc-lan/ClearCLIP configs/cfg_voc21.py and clearclip_segmentor.py.
_base_ = [
    '../_base_/models/clip_clearclip.py',
    '../_base_/datasets/voc21.py',
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
    text=dict(class_names='data/class_names/reference/clearclip_voc21.txt', background_class=0),
    prob_thd=0.5
)
