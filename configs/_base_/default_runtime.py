# Runtime shared by every mmseg-ovss config.
custom_imports = dict(imports=['mmseg_ovss'], allow_failed_imports=False)
default_scope = 'mmseg'
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(
    type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
tta_model = dict(type='SegTTAModel')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'),
    # stops training at the first NaN/inf loss, before a checkpoint saves
    # it (mmseg_ovss/engine/hooks.py); set to None to turn it off
    non_finite_loss=dict(type='NonFiniteLossHook'),
    # logs learnable / frozen / total parameters at the start of training
    # and checks that frozen weights hold no gradient buffers
    # (mmseg_ovss/engine/parameters.py)
    learnable_parameters=dict(type='LearnableParametersHook'))
