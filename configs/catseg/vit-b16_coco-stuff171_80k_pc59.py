# CAT-Seg ViT-B/16 trained on COCO-Stuff 171
# (./vit-b16_coco-stuff171_80k.py), evaluated zero-shot on
# PASCAL Context-59 (val, 5105 images, 59 classes).
# DCP-CLIP Table I, ViT-B/16 block, CAT-Seg row: PC-59 57.5 mIoU.
# Inference as CAT-Seg evaluates (eval.sh, TEST.SLIDING_WINDOW True):
# short side 640 (max 2560), then the model's catseg_ensemble: the
# image at 640 x 640, 384 windows at stride 256 and the whole image
# at 384; prediction resized back to the original size.
# Test: bash tools/dist_test.sh configs/catseg/vit-b16_coco-stuff171_80k_pc59.py \
#     work_dirs/catseg/vit-b16_coco-stuff171_80k/iter_80000.pth 4
_base_ = [
    '../_base_/models/catseg_vit-b16.py',
    '../_base_/datasets/pc59.py',
]
# CAT-Seg prompts class 49 with the name of its datasets/pc59.json
model = dict(class_name_map=dict(table='diningtable'))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
# evaluation only (train with ./vit-b16_coco-stuff171_80k.py)
train_dataloader = None
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
