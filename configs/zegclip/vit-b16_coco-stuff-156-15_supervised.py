# ZegCLIP, CLIP ViT-B/16, COCO-Stuff 164k (156 seen / 15 unseen), supervised.
# Setting: fully supervised (all classes labelled).
# 80k iterations, batch 16 in all, 512 x 512 crops; K = 100 prompts,
# text templates 'vild'.
# Paper: CLIP-RC Table 3: 69.9 / 49.6 / 40.7 / 63.2 (pAcc / hIoU / mIoU(S) / mIoU(U)).
_base_ = [
    '../_base_/models/zegclip_vit-b16.py',
    '../_base_/datasets/zero_shot/coco_stuff171_156-15_supervised.py',
    '../_base_/schedules/zegclip_80k.py'
]
model = dict(
    backbone=dict(prompts=dict(num_tokens=100)),
    text_encoder=dict(templates='vild'),
    # calibration only in the inductive setting
    seen_score_offset=0.0,
)
custom_hooks = [dict(type='DatasetVocabularyHook')]
