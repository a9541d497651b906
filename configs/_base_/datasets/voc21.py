# PASCAL VOC 2012 val (1449 images), 21 classes, background = 0.
# The data root is $OVSS_DATA_ROOT (default: data) + the folder below; see
# docs/datasets.md for the layout. Method configs re-declare test_pipeline
# with their own short side and set test_dataloader/val_dataloader
# dataset.pipeline to it.
# Training on the SBD-augmented set: --cfg-options
# train_dataloader.dataset.ann_file=ImageSets/Segmentation/aug.txt
# train_dataloader.dataset.data_prefix.seg_map_path=SegmentationClassAug
dataset_type = 'PascalVOC21Dataset'
data_root = '{{$OVSS_DATA_ROOT:data}}/VOCdevkit/VOC2012'
dataset_ignore_index = 255
test_short_side = 448

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, test_short_side), keep_ratio=True),
    # after Resize: the ground truth stays at its original size
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
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
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path='JPEGImages',
            seg_map_path='SegmentationClass'),
        ann_file='ImageSets/Segmentation/train.txt',
        pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path='JPEGImages',
            seg_map_path='SegmentationClass'),
        ann_file='ImageSets/Segmentation/val.txt',
        pipeline=test_pipeline))
val_dataloader = test_dataloader
# mmseg's IoUMetric; its --out PNGs are 16-bit where ids exceed 255
test_evaluator = dict(
    type='OVSSIoUMetric', iou_metrics=['mIoU'],
    ignore_index=dataset_ignore_index)
val_evaluator = test_evaluator
