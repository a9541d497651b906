# DCP-CLIP ViT-L/14 trained on COCO-Stuff 171 for 80k iterations, batch 4 in
# total on 4 GPUs (Sec. IV-A): DCP-CLIP's Table I, ViT-L/14 block
# (A-847 16.4, PC-459 24.3, A-150 38.1, PC-59 63.8, PAS-20 97.3).
# Table II (compared at ViT-L/14, docs/dcp_clip.md): 80.3 M learnable / 443.6 M total parameters, 616.2 GFLOPs,
# 0.20 s per image, training 496.4 min.
# Train: bash tools/dist_train.sh configs/dcpclip/vit-l14_coco-stuff171_80k.py 4 \
#     --work-dir work_dirs/dcpclip/vit-l14_coco-stuff171_80k
_base_ = [
    '../_base_/models/dcpclip_vit-l14.py',
    '../catseg/_base_/coco-stuff171_384.py',
    '../_base_/schedules/catseg_80k.py',
]
# a checkpoint at every validation (5000 iterations), the last 3 kept
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000,
                    max_keep_ckpts=3, save_last=True))
