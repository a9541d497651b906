# PnP-OVSS + BridgeTower large (ITM) on PASCAL Context 59, short side 770.
# Paper Table 3 (BridgeTower, 770): 32.4 mIoU; the 322 and 336 rows are
# bridgetower_pc59_322.py and bridgetower_pc59_336.py. Table 2: layer 2,
# head 8. Short sides are multiples of BridgeTower large's 14-pixel
# patches (322 = 23 x 14, 336 = 24 x 14, 770 = 55 x 14).
_base_ = [
    '../_base_/datasets/pc59.py',
    '../_base_/models/pnp_bridgetower.py',
    '../_base_/default_runtime.py',
]
test_short_side = 770
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, test_short_side), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
# Training-free: no training split is used.
train_dataloader = None
model = dict(class_names='data/class_names/pc59.txt')
