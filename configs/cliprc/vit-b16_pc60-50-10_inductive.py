# CLIP-RC, CLIP ViT-B/16, PASCAL Context 60 (50 seen incl. background / 10 unseen), inductive.
# Setting: inductive (seen classes only; unseen pixels ignored; seen scores - 0.1 at test).
# 40k iterations, batch 16 in all, 512 x 512 crops; K = 100 prompts,
# text templates 'vild'.
# Paper: Table 1 (Context): 76.2 / 51.9 / 47.5 / 57.3 (pAcc / hIoU / mIoU(S) / mIoU(U)).
_base_ = [
    '../_base_/models/cliprc_vit-b16.py',
    '../_base_/datasets/zero_shot/pc60_50-10_inductive.py',
    '../_base_/schedules/zegclip_40k.py'
]
model = dict(
    backbone=dict(prompts=dict(num_tokens=100)),
    text_encoder=dict(templates='vild'),
    seen_score_offset=0.1,
)
custom_hooks = [dict(type='DatasetVocabularyHook')]
