# ZegCLIP / CLIP-RC recipe (zegclip_40k.py) over 10k iterations: ZegCLIP's
# VOC self-training run (ZiqinZhou66/ZegCLIP,
# configs/voc12/vpt_seg_zero_vit-b_512x512_10k_12_10_st.py, which uses
# configs/_base_/schedules/schedule_10k.py: max_iters=10000).
_base_ = ['./zegclip_40k.py']
param_scheduler = [
    dict(type='WarmupPolyLR', power=0.9, eta_min=1e-6, warmup_iters=1500,
         warmup_ratio=1e-6, begin=0, end=10000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=10000,
                 val_interval=1000)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=1000,
                    max_keep_ckpts=-1, save_last=True))
