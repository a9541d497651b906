# PnP-OVSS + BridgeTower large on PASCAL Context 59, short side 322.
# Paper Table 3 (BridgeTower, 322): 32.3 mIoU.
_base_ = ['./bridgetower_pc59.py']
test_short_side = 322
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, test_short_side), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
