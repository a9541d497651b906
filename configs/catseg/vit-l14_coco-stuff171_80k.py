# CAT-Seg ViT-L/14 trained on COCO-Stuff 171 for 80k iterations, batch 4 in
# total (cvlab-kaist/CAT-Seg configs/vitl_336.yaml): the CAT-Seg row of
# DCP-CLIP's Table I, ViT-L/14 block (A-847 10.8, PC-459 20.4, A-150 31.5, PC-59 62.0, PAS-20 96.6).
# Table II (compared at ViT-L/14, docs/dcp_clip.md): 70.3 M learnable / 433.7 M total parameters, 2121.1 GFLOPs,
# 0.54 s per image, training 875.5 min.
# Train: bash tools/dist_train.sh configs/catseg/vit-l14_coco-stuff171_80k.py 4 \
#     --work-dir work_dirs/catseg/vit-l14_coco-stuff171_80k
_base_ = [
    '../_base_/models/catseg_vit-l14.py',
    './_base_/coco-stuff171_384.py',
    '../_base_/schedules/catseg_80k.py',
]
# a checkpoint at every validation (5000 iterations), the last 3 kept
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000,
                    max_keep_ckpts=3, save_last=True))
