# PnP-OVSS + BridgeTower large on COCO-Stuff 171, short side 336.
# Paper Table 3 (BridgeTower, 336): 27.6 mIoU.
_base_ = ['./bridgetower_stuff.py']
test_short_side = 336
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, test_short_side), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
