# PnP-OVSS + BLIP Flickr on COCO-Stuff 171, short side 448.
# Paper Table 3 (BLIP Flickr, 448): 31.5 mIoU. The 768 row is blip_stuff.py.
_base_ = ['./blip_stuff.py']
test_short_side = 448
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, test_short_side), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
