# SCLIP on PASCAL Context 60 (Wang et al., ECCV 2024): values of wangf3014/SCLIP configs/cfg_context60.py and clip_segmentor.py.
_base_ = [
    '../_base_/models/clip_sclip.py',
    '../_base_/datasets/pc60.py',
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 336), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
train_dataloader = None  # training-free
model = dict(
    text=dict(class_names='data/class_names/pc60.txt', background_class=0),
    decode_head=dict(logit_scale=50.0),
    prob_thd=0.1
)
