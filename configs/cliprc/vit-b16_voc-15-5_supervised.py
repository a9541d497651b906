# CLIP-RC, CLIP ViT-B/16, PASCAL VOC 2012 (15 seen / 5 unseen), supervised.
# Setting: fully supervised (all classes labelled).
# 40k iterations, batch 16 in all, 512 x 512 crops; K = 10 prompts,
# text templates 'zegclip_single' ("a photo of a {}", the authors' text).
# Paper: Table 3: 97.1 / 93.7 / 94.1 / 93.4 (pAcc / hIoU / mIoU(S) / mIoU(U)).
_base_ = [
    '../_base_/models/cliprc_vit-b16.py',
    '../_base_/datasets/zero_shot/voc20_15-5_supervised.py',
    '../_base_/schedules/zegclip_40k.py'
]
model = dict(
    backbone=dict(prompts=dict(num_tokens=10)),
    text_encoder=dict(templates='zegclip_single'),
    # calibration only in the inductive setting
    seen_score_offset=0.0,
)
custom_hooks = [dict(type='DatasetVocabularyHook')]
