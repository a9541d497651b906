# ZegCLIP, CLIP ViT-B/16, PASCAL VOC 2012 (15 seen / 5 unseen), supervised.
# Setting: fully supervised (all classes labelled).
# 20k iterations, as the authors train ZegCLIP on VOC (ZiqinZhou66/ZegCLIP,
# configs/voc12/vpt_seg_fully_vit-b_512x512_20k_12_10.py; CLIP-RC trains
# 40k), batch 16 in all, 512 x 512 crops; K = 10 prompts,
# text templates 'zegclip_single' ("a photo of a {}", the authors' text).
# Paper: CLIP-RC Table 3 (ZegCLIP*): 96.3 / 91.6 / 92.4 / 90.9 (pAcc / hIoU / mIoU(S) / mIoU(U)).
_base_ = [
    '../_base_/models/zegclip_vit-b16.py',
    '../_base_/datasets/zero_shot/voc20_15-5_supervised.py',
    '../_base_/schedules/zegclip_20k.py'
]
model = dict(
    backbone=dict(prompts=dict(num_tokens=10)),
    text_encoder=dict(templates='zegclip_single'),
    # calibration only in the inductive setting
    seen_score_offset=0.0,
)
custom_hooks = [dict(type='DatasetVocabularyHook')]
