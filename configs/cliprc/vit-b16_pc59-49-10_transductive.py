# CLIP-RC, CLIP ViT-B/16, PASCAL Context 59 (49 seen / 10 unseen, background ignored), transductive.
# Setting: transductive: unseen names known; continues from the checkpoint in the
# middle of the inductive run (iteration 20k of 40k, weights only: a
# fresh optimiser and schedule, the paper's "from scratch") and trains
# 20k iterations with pseudo-labels (argmax over the unseen classes)
# for the pixels whose ground truth is an unseen class (void stays ignored;
# ZegCLIP's self-training rule). Another start: --cfg-options load_from=PATH.
# 20k iterations, batch 16 in all, 512 x 512 crops; K = 100 prompts,
# text templates 'vild'.
# Paper: not reported (the paper's Context protocol is PC60 with background seen:
# see vit-b16_pc60-50-10_transductive.py).
_base_ = [
    '../_base_/models/cliprc_vit-b16.py',
    '../_base_/datasets/zero_shot/pc59_49-10_transductive.py',
    '../_base_/schedules/zegclip_20k.py'
]
model = dict(
    backbone=dict(prompts=dict(num_tokens=100)),
    text_encoder=dict(templates='vild'),
    # calibration only in the inductive setting
    seen_score_offset=0.0,
    decode_head=dict(self_training=True),
)
custom_hooks = [dict(type='DatasetVocabularyHook')]
load_from = 'work_dirs/cliprc/vit-b16_pc59-49-10_inductive/iter_20000.pth'
