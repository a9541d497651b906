# CLIP-RC cross-dataset (CLIP-RC Table 4): the COCO-Stuff 156/15 inductive
# model (vit-b16_coco-stuff-156-15_inductive.py) tested on PASCAL Context 59 (background ignored)
# val, all its classes, no zero-shot split (so no seen-score calibration).
# Paper: pAcc / mIoU / mAcc = 70.9 / 49.2 / 69.9.
# Test: python tools/test.py THIS_CONFIG work_dirs/cliprc/vit-b16_coco-stuff-156-15_inductive/iter_80000.pth
_base_ = ['./vit-b16_coco-stuff-156-15_inductive.py']
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
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
        _delete_=True,
        type='PascalContext59Dataset',
        data_root='{{$OVSS_DATA_ROOT:data}}/VOCdevkit/VOC2010',
        data_prefix=dict(
            img_path='JPEGImages',
            seg_map_path='SegmentationClassContext'),
        ann_file='ImageSets/SegmentationContext/val.txt',
        pipeline=test_pipeline))
val_dataloader = test_dataloader
test_evaluator = dict(
    _delete_=True, type='OVSSIoUMetric', iou_metrics=['mIoU'],
    ignore_index=255)
val_evaluator = test_evaluator
