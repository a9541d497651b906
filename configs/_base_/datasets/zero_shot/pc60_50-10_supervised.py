# PASCAL Context, 60 classes (background = class 0, a seen class),
# zero-shot split data/splits/pc60_50_10.json: 50 seen incl. background /
# 10 unseen (cow, motorbike, sofa, cat, boat, fence, bird, tvmonitor,
# keyboard, aeroplane), CLIP-RC Sec. 4.1's text.
# Train: train, 4,996 images. Test: val (5,105 images in mmseg's val.txt).
# Setting: fully supervised. Every class is labelled (the upper bound);
# ZeroShotLabels only checks the label values.
# Training uses mmseg's standard augmentation, then ZeroShotLabels; testing
# is on all classes at short side 512 with ZeroShotIoUMetric (pAcc, mIoU,
# mIoU_seen, mIoU_unseen, hIoU). A trainable model config adds
# custom_hooks = [dict(type='DatasetVocabularyHook')] so that the model gets
# each stage's vocabulary; see docs/zero_shot.md.
_base_ = ['../pc60.py']
zero_shot_split = 'data/splits/pc60_50_10.json'
zero_shot_setting = 'supervised'
dataset_ignore_index = 255
test_short_side = 512
train_crop_size = (512, 512)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadCheckedAnnotations'),
    dict(
        type='RandomResize',
        scale=(2048, 512),
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(
        type='RandomCrop',
        crop_size=train_crop_size,
        cat_max_ratio=0.75,
        ignore_index=dataset_ignore_index),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(
        type='ZeroShotLabels',
        split=zero_shot_split,
        setting=zero_shot_setting,
        ignore_index=dataset_ignore_index),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, test_short_side), keep_ratio=True),
    # after Resize: the ground truth stays at its original size
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
# batch 4 per GPU: 16 in all on 4 GPUs (ZegCLIP / CLIP-RC)
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
test_evaluator = dict(type='ZeroShotIoUMetric', split=zero_shot_split)
val_evaluator = test_evaluator
