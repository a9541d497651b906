# PnP-OVSS + BLIP Flickr on COCO-Object 80 + background, short side 320.
# Paper Table 3 (BLIP Flickr, 320): 28.0 mIoU. The 768 row is blip_object.py.
_base_ = ['./blip_object.py']
test_short_side = 320
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, test_short_side), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
