# ZegCLIP, CLIP ViT-B/16, COCO-Stuff 164k (156 seen / 15 unseen), inductive.
# Setting: inductive (seen classes only; unseen pixels ignored; seen scores - 0.1 at test).
# 80k iterations, batch 16 in all, 512 x 512 crops; K = 100 prompts,
# text templates 'vild'.
# Paper: CLIP-RC Table 1: 62.0 / 40.8 / 40.2 / 41.4 (pAcc / hIoU / mIoU(S) / mIoU(U)).
_base_ = [
    '../_base_/models/zegclip_vit-b16.py',
    '../_base_/datasets/zero_shot/coco_stuff171_156-15_inductive.py',
    '../_base_/schedules/zegclip_80k.py'
]
model = dict(
    backbone=dict(prompts=dict(num_tokens=100)),
    text_encoder=dict(templates='vild'),
    seen_score_offset=0.1,
)
custom_hooks = [dict(type='DatasetVocabularyHook')]
