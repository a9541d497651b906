# GEM on PASCAL Context 60 (Bousselham et al., CVPR 2024; WalBouss/GEM gem/gem_utils.py) at the resolution mc-lan/ClearCLIP runs it (configs/cfg_context60.py).
_base_ = [
    '../_base_/models/clip_gem.py',
    '../_base_/datasets/pc60.py',
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 448), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
train_dataloader = None  # training-free
model = dict(
    text=dict(class_names='data/class_names/pc60.txt', background_class=0)
)
