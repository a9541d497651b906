# PnP-OVSS + BLIP Flickr on PASCAL Context 59, short side 320.
# Paper Table 3 (BLIP Flickr, 320): 40.4 mIoU. The 768 row is blip_pc59.py.
_base_ = ['./blip_pc59.py']
test_short_side = 320
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, test_short_side), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
