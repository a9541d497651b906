# PnP-OVSS + BridgeTower large on PASCAL VOC 20 (background ignored), short side 336.
# Paper Table 3 (BridgeTower, 336): 35.3 mIoU.
_base_ = ['./bridgetower_voc20.py']
test_short_side = 336
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, test_short_side), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
