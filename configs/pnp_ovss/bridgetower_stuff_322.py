# PnP-OVSS + BridgeTower large on COCO-Stuff 171, short side 322.
# Paper Table 3 (BridgeTower, 322): 27.6 mIoU.
_base_ = ['./bridgetower_stuff.py']
test_short_side = 322
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, test_short_side), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
