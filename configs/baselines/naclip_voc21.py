# NACLIP on PASCAL VOC 21 (Hajimiri et al., WACV 2025): values of sinahmr/NACLIP configs/cfg_voc21.py and naclip.py.
_base_ = [
    '../_base_/models/clip_naclip.py',
    '../_base_/datasets/voc21.py',
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
    text=dict(class_names='data/class_names/voc21.txt', background_class=0),
    prob_thd=0.1,
    test_cfg=dict(mode='whole')
)
