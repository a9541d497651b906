# NACLIP on Cityscapes (Hajimiri et al., WACV 2025): values of sinahmr/NACLIP configs/cfg_city_scapes.py and naclip.py.
_base_ = [
    '../_base_/models/clip_naclip.py',
    '../_base_/datasets/cityscapes.py',
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 560), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
train_dataloader = None  # training-free
model = dict(
    text=dict(class_names='data/class_names/cityscapes.txt')
)
