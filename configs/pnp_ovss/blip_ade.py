# PnP-OVSS + BLIP Flickr on ADE20K 150, short side 768.
# Paper Table 3 (BLIP Flickr, 768): 23.5 mIoU.
# Other rows of Table 3 (224, 320, 336, 448): change test_short_side below.
_base_ = [
    '../_base_/datasets/ade150.py',
    '../_base_/models/pnp_blip.py',
    '../_base_/default_runtime.py',
]
test_short_side = 768
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
model = dict(class_names='data/class_names/ade150.txt')
