# ZegCLIP / CLIP-RC recipe (zegclip_40k.py) over 20k iterations.
_base_ = ['./zegclip_40k.py']
param_scheduler = [
    dict(type='WarmupPolyLR', power=0.9, eta_min=1e-6, warmup_iters=1500,
         warmup_ratio=1e-6, begin=0, end=20000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=20000,
                 val_interval=2000)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2000,
                    max_keep_ckpts=-1, save_last=True))
