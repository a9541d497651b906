# CLIP-RC, CLIP ViT-B/16, COCO-Stuff 164k (156 seen / 15 unseen), transductive.
# Setting: transductive: unseen names known; continues from the checkpoint in the
# middle of the inductive run (iteration 40k of 80k, weights only: a
# fresh optimiser and schedule, the paper's "from scratch") and trains
# 40k iterations with pseudo-labels (argmax over the unseen classes)
# for the pixels whose ground truth is an unseen class (void stays ignored;
# ZegCLIP's self-training rule). Another start: --cfg-options load_from=PATH.
# 40k iterations, batch 16 in all, 512 x 512 crops; K = 100 prompts,
# text templates 'vild'.
# Paper: Table 2: 69.9 / 49.7 / 42.0 / 60.8 (pAcc / hIoU / mIoU(S) / mIoU(U)).
_base_ = [
    '../_base_/models/cliprc_vit-b16.py',
    '../_base_/datasets/zero_shot/coco_stuff171_156-15_transductive.py',
    '../_base_/schedules/zegclip_40k.py'
]
model = dict(
    backbone=dict(prompts=dict(num_tokens=100)),
    text_encoder=dict(templates='vild'),
    # calibration only in the inductive setting
    seen_score_offset=0.0,
    decode_head=dict(self_training=True),
)
custom_hooks = [dict(type='DatasetVocabularyHook')]
load_from = 'work_dirs/cliprc/vit-b16_coco-stuff-156-15_inductive/iter_40000.pth'
