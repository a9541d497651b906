# The CAT-Seg / SED training recipe that DCP-CLIP follows (Sec. IV-A;
# cvlab-kaist/CAT-Seg configs/config.yaml and train_net.py):
# AdamW lr 2e-4, weight decay 1e-4, CLIP at 0.01 x lr (CLIP_MULTIPLIER),
# no weight decay on normalisation layers (detectron2's WEIGHT_DECAY_NORM
# 0) nor on Swin relative position tables, cosine decay to 0 over 80k
# iterations without warm-up (WarmupCosineLR, WARMUP_ITERS 0), batch 4 in
# total, and gradient clipping of the whole model: detectron2's
# CLIP_GRADIENTS 'full_model' calls torch.nn.utils.clip_grad_norm_ once on
# the parameters of every group with max norm 0.01 (L2) before each step,
# which is what mmengine's OptimWrapper clip_grad does.
total_batch_size = 4
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999),
                   weight_decay=1e-4),
    clip_grad=dict(max_norm=0.01, norm_type=2),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={
            'backbone.visual': dict(lr_mult=0.01),
            'text_encoder': dict(lr_mult=0.01),
            'relative_position_bias_table': dict(decay_mult=0.0),
        }))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=80000, eta_min=0.0, begin=0,
         end=80000, by_epoch=False)
]
# CAT-Seg evaluates every 5000 iterations (TEST.EVAL_PERIOD)
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000,
                 val_interval=5000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# (a training config sets the checkpoint interval to val_interval in its
# default_hooks: default_runtime.py, a sibling base, owns default_hooks)
