# ClearCLIP on COCO-Object (values: FACTS §1-2).
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
    text=dict(class_names='data/class_names/reference/clearclip_coco_object.txt', background_class=0),
    prob_thd=0.4
)
