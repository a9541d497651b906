# SCLIP on COCO-Object (Wang et al., ECCV 2024): values of wangf3014/SCLIP configs/cfg_coco_object.py and clip_segmentor.py.
_base_ = [
    '../_base_/models/clip_sclip.py',
    '../_base_/datasets/coco_object.py',
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
    # the reference file lists "bed" among the background words and as
    # class 60 (it can never win there): read as the authors do, with a warning
    text=dict(class_names='data/class_names/coco_object.txt', background_class=0,
        shared_synonyms='allow'),
    decode_head=dict(logit_scale=50.0),
    prob_thd=0.1
)
