# ProxyCLIP on PASCAL VOC 20 (Lan et al., ECCV 2024): values of mc-lan/ProxyCLIP configs/cfg_voc20.py and proxyclip_segmentor.py.
_base_ = [
    '../_base_/models/clip_proxyclip.py',
    '../_base_/datasets/voc20.py',
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 336), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
train_dataloader = None  # training-free
model = dict(
    text=dict(class_names='data/class_names/reference/proxyclip_voc20.txt')
)
