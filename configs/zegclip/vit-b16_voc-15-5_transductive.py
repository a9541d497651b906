# ZegCLIP, CLIP ViT-B/16, PASCAL VOC 2012 (15 seen / 5 unseen), transductive.
# Setting: transductive: unseen names known; continues from the checkpoint in the
# middle of the inductive run (iteration 10k of 20k, weights only: a
# fresh optimiser and schedule, the paper's "from scratch") and trains
# 10k iterations with pseudo-labels (argmax over the unseen classes)
# for the pixels whose ground truth is an unseen class (void stays ignored;
# ZegCLIP's self-training rule). Another start: --cfg-options load_from=PATH.
# As the authors (ZiqinZhou66/ZegCLIP, README.md, VOC self-training:
# vpt_seg_zero_vit-b_512x512_10k_12_10_st.py --load-from
# .../zero_12_10/iter_10000.pth, the 20k inductive run's iteration 10k).
# 10k iterations, batch 16 in all, 512 x 512 crops; K = 10 prompts,
# text templates 'zegclip_single' ("a photo of a {}", the authors' text).
# Paper: CLIP-RC Table 2 (ZegCLIP+ST): 96.2 / 91.1 / 92.3 / 89.9 (pAcc / hIoU / mIoU(S) / mIoU(U)).
_base_ = [
    '../_base_/models/zegclip_vit-b16.py',
    '../_base_/datasets/zero_shot/voc20_15-5_transductive.py',
    '../_base_/schedules/zegclip_10k.py'
]
model = dict(
    backbone=dict(prompts=dict(num_tokens=10)),
    text_encoder=dict(templates='zegclip_single'),
    # calibration only in the inductive setting
    seen_score_offset=0.0,
    decode_head=dict(self_training=True),
)
custom_hooks = [dict(type='DatasetVocabularyHook')]
load_from = 'work_dirs/zegclip/vit-b16_voc-15-5_inductive/iter_10000.pth'
