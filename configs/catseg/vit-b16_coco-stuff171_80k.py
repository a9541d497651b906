# CAT-Seg ViT-B/16 trained on COCO-Stuff 171 for 80k iterations, batch 4 in
# total (cvlab-kaist/CAT-Seg configs/vitb_384.yaml): the CAT-Seg row of
# DCP-CLIP's Table I, ViT-B/16 block (A-847 8.4, PC-459 16.6, A-150 27.2, PC-59 57.5, PAS-20 93.7).
# Train: bash tools/dist_train.sh configs/catseg/vit-b16_coco-stuff171_80k.py 4 \
#     --work-dir work_dirs/catseg/vit-b16_coco-stuff171_80k
_base_ = [
    '../_base_/models/catseg_vit-b16.py',
    './_base_/coco-stuff171_384.py',
    '../_base_/schedules/catseg_80k.py',
]
# a checkpoint at every validation (5000 iterations), the last 3 kept
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000,
                    max_keep_ckpts=3, save_last=True))
