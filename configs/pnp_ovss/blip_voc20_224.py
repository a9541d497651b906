# PnP-OVSS + BLIP Flickr on PASCAL VOC 20 (background ignored), short side 224.
# Paper Table 3 (BLIP Flickr, 224): 47.8 mIoU. The 768 row is blip_voc20.py.
_base_ = ['./blip_voc20.py']
test_short_side = 224
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, test_short_side), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
