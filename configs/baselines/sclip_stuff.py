# SCLIP on COCO-Stuff 171 (Wang et al., ECCV 2024): values of wangf3014/SCLIP configs/cfg_coco_stuff164k.py and clip_segmentor.py.
_base_ = [
    '../_base_/models/clip_sclip.py',
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
    text=dict(class_names='data/class_names/reference/coco_stuff171.txt')
)
