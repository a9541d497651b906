# ADE20K-847 val (2000 images): uint16 TIFF labels, ignore 65535.
# Images and labels made by tools/dataset_converters/ade20k_847.py. Test only.
# The data root is $OVSS_DATA_ROOT (default: data) + the folder below; see
# docs/datasets.md for the layout. Method configs re-declare test_pipeline
# with their own short side and set test_dataloader/val_dataloader
# dataset.pipeline to it.
dataset_type = 'ADE20K847Dataset'
data_root = '{{$OVSS_DATA_ROOT:data}}/ADE20K_2021_17_01'
dataset_ignore_index = 65535
test_short_side = 448

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, test_short_side), keep_ratio=True),
    # after Resize: the ground truth stays at its original size
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path='images_detectron2/validation',
            seg_map_path='annotations_detectron2/validation'),
        ignore_index=dataset_ignore_index,
        pipeline=test_pipeline))
val_dataloader = test_dataloader
# mmseg's IoUMetric; its --out PNGs are 16-bit where ids exceed 255
test_evaluator = dict(
    type='OVSSIoUMetric', iou_metrics=['mIoU'],
    ignore_index=dataset_ignore_index)
val_evaluator = test_evaluator
