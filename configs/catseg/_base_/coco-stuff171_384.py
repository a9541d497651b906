# COCO-Stuff 164k (171 classes) as CAT-Seg trains on it
# (cvlab-kaist/CAT-Seg configs/vitb_384.yaml and
# mask_former_semantic_dataset_mapper.py), in mmseg transforms:
# - ResizeShortestEdge(384, max 1333) -> Resize to a short side of 384 with
#   the long side at most 1333 (detectron2's default MAX_SIZE_TRAIN);
# - RandomCrop_CategoryAreaConstraint(384 x 384, single category max area
#   1.0 = no constraint) -> RandomCrop(384, cat_max_ratio=1.0);
# - ColorAugSSDTransform -> PhotoMetricDistortion (the same SSD
#   brightness 32 / contrast 0.5-1.5 / saturation 0.5-1.5 / hue 18);
# - RandomFlip (horizontal, p 0.5);
# - padding to 384 (SIZE_DIVISIBILITY) is the data preprocessor's size.
# Validation and test: CAT-Seg's test input (ResizeShortestEdge 640, max
# 2560; the model's 'catseg_ensemble' inference then resizes it to 640 x
# 640); the prediction is resized back to the original size and scored
# there.
_base_ = ['../../_base_/datasets/coco_stuff171.py']
train_crop_size = (384, 384)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadCheckedAnnotations'),
    dict(type='Resize', scale=(1333, 384), keep_ratio=True),
    dict(type='RandomCrop', crop_size=train_crop_size, cat_max_ratio=1.0,
         ignore_index=255),
    dict(type='PhotoMetricDistortion'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    # the per-process batch follows total_batch_size (4, the schedule)
    batch_size=1,
    num_workers=4,
    dataset=dict(pipeline=train_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
