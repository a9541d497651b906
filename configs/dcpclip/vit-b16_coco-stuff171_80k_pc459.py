# DCP-CLIP ViT-B/16 trained on COCO-Stuff 171
# (./vit-b16_coco-stuff171_80k.py), evaluated zero-shot on
# PASCAL Context-459 (val, 5105 images, 459 classes).
# DCP-CLIP Table I, ViT-B/16 block, DCP-CLIP row: PC-459 19.7 mIoU.
# Inference as CAT-Seg evaluates (eval.sh, TEST.SLIDING_WINDOW True):
# short side 640 (max 2560), then the model's catseg_ensemble: the
# image at 640 x 640, 384 windows at stride 256 and the whole image
# at 384; prediction resized back to the original size.
# Test: bash tools/dist_test.sh configs/dcpclip/vit-b16_coco-stuff171_80k_pc459.py \
#     work_dirs/dcpclip/vit-b16_coco-stuff171_80k/iter_80000.pth 4
_base_ = [
    '../_base_/models/dcpclip_vit-b16.py',
    '../_base_/datasets/pc459.py',
]
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
# Tag Validation (Eq. 17) re-checks the regions of classes unseen in
# COCO-Stuff training; a class is seen when its name is a COCO-Stuff class
# name (name_map=None, the paper's Fig. 6: ADE 'water' corrected to 'river'
# and 'sidewalk' to 'path', so neither counts as COCO-Stuff's 'water-other'
# / 'pavement'). Matching through this vocabulary's name map instead:
# --cfg-options model.decode_head.tag_validation.name_map=data/name_maps/pc459.json
