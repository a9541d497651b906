# DCP-CLIP ViT-B/16 trained on COCO-Stuff 171 for 80k iterations, batch 4 in
# total on 4 GPUs (Sec. IV-A): DCP-CLIP's Table I, ViT-B/16 block
# (A-847 12.3, PC-459 19.7, A-150 32.4, PC-59 58.1, PAS-20 95.9).
# Train: bash tools/dist_train.sh configs/dcpclip/vit-b16_coco-stuff171_80k.py 4 \
#     --work-dir work_dirs/dcpclip/vit-b16_coco-stuff171_80k
_base_ = [
    '../_base_/models/dcpclip_vit-b16.py',
    '../catseg/_base_/coco-stuff171_384.py',
    '../_base_/schedules/catseg_80k.py',
]
# a checkpoint at every validation (5000 iterations), the last 3 kept
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000,
                    max_keep_ckpts=3, save_last=True))
