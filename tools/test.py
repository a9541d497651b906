"""Evaluate a segmentor (mmseg's test tool; the checkpoint is optional).

Training-free models (the CLIP family, FreeCP, PnP-OVSS) need no checkpoint:
    python tools/test.py configs/freecp/sclip_ade.py
Trained models:
    python tools/test.py configs/M/NAME.py work_dirs/M/NAME/iter_80000.pth
    bash tools/dist_test.sh CONFIG CHECKPOINT 8
``--out DIR`` writes one PNG of label ids per image (16-bit where ids exceed
255, e.g. PC-459 and ADE-847); ``--tta`` adds horizontal-flip test-time
augmentation for segmentors that support it (mmseg's ``EncoderDecoder``
models and the training-free CLIP segmentors).
"""
import argparse
import os.path as osp
import sys

from mmengine.config import Config
from mmengine.runner import Runner

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))
from mmseg_ovss.engine.checkpoint import (  # noqa: E402
    TRUST_CHECKPOINT_KEY, add_checkpoint_check, add_trust_argument,
    check_checkpoint_file, trusted_checkpoint_of)
from mmseg_ovss.engine.launch import (  # noqa: E402
    add_runner_arguments, close_process_group, init_cpu_process_group,
    load_runner_config, parse_runner_args)
from mmseg_ovss.utils.errors import (OVSSConfigError,  # noqa: E402
                                     OVSSDataError)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Evaluate a segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument(
        'checkpoint', nargs='?', default=None,
        help='checkpoint file (not needed for training-free models)')
    add_trust_argument(parser)
    parser.add_argument(
        '--out', help='directory to save predicted label maps (one PNG per '
        'image, named after it; 16-bit where ids exceed 255)')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir', help='directory (under the work dir) where painted '
        'images are saved')
    parser.add_argument(
        '--show-interval', type=int, default=1,
        help='paint every n-th test image (default: all)')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--tta', action='store_true',
        help='horizontal-flip test-time augmentation (the config\'s '
        'tta_pipeline if it has one); segmentors built on mmseg\'s '
        'EncoderDecoder (the CLIP segmentors included, not PnP-OVSS)')
    add_runner_arguments(parser, 'model.decode_head.logit_scale=50')
    return check_arguments(parse_runner_args(parser, argv))


def check_arguments(args):
    """Refuse values out of range before anything is built."""
    if args.show_interval < 1:
        raise OVSSConfigError(
            f'--show-interval {args.show_interval}: give a positive n (paint '
            'every n-th image; 1 paints all)')
    if args.wait_time < 0:
        raise OVSSConfigError(
            f'--wait-time {args.wait_time}: give a duration >= 0 seconds')
    if args.out is not None and osp.exists(args.out) and not osp.isdir(
            args.out):
        raise OVSSDataError(
            f'--out {args.out} is a file; give a directory (it is created '
            'if missing)')
    return args


def enable_visualization(cfg: Config, args) -> None:
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise OVSSConfigError(
            '--show/--show-dir need default_hooks.visualization (a '
            'SegVisualizationHook); inherit configs/_base_/default_runtime.py.')
    hooks.visualization.draw = True
    hooks.visualization.interval = args.show_interval
    if args.show:
        hooks.visualization.show = True
        hooks.visualization.wait_time = args.wait_time
    if args.show_dir:
        # Relative show dirs live under the work dir, as in mmseg.
        cfg.visualizer.save_dir = osp.join(cfg.work_dir, args.show_dir)


def keep_test_loop_only(cfg: Config) -> None:
    """Drop the train/val groups: the Runner needs each group whole or absent.

    Dataset bases declare train and val dataloaders; a training-free config
    has no optimizer or loops to go with them.
    """
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper',
                'param_scheduler', 'val_dataloader', 'val_cfg',
                'val_evaluator'):
        cfg[key] = None
    if not cfg.get('test_cfg'):
        cfg.test_cfg = dict(type='TestLoop')


def build_cfg(args) -> Config:
    cfg = load_runner_config(args)
    keep_test_loop_only(cfg)
    if args.checkpoint is not None:
        # missing, empty, cut short or not a checkpoint
        check_checkpoint_file(args.checkpoint)
        cfg.load_from = args.checkpoint
    if args.trust_checkpoint:
        cfg[TRUST_CHECKPOINT_KEY] = True
    if cfg.get('load_from'):
        # refuse a checkpoint that matches few of the model's keys
        add_checkpoint_check(cfg, cfg.load_from)
    if args.show or args.show_dir:
        enable_visualization(cfg, args)
    if args.out is not None:
        cfg.test_evaluator = _with_output_dir(cfg.test_evaluator, args.out)
    if args.tta:
        enable_flip_tta(cfg, args.config)
    return cfg


def _with_output_dir(evaluator, out_dir):
    """Set ``output_dir``; mmseg's 8-bit ``IoUMetric`` becomes
    ``OVSSIoUMetric`` (same scores, 16-bit PNGs where ids exceed 255)."""
    evaluators = evaluator if isinstance(evaluator, list) else [evaluator]
    for item in evaluators:
        if item.get('type') in ('IoUMetric', 'mmseg.IoUMetric'):
            item['type'] = 'OVSSIoUMetric'
        item['output_dir'] = out_dir
    return evaluator


def flip_tta_pipeline(test_pipeline: list) -> list:
    """mmseg's TestTimeAug over the test pipeline: each image as is and
    flipped left-right (the loader first, the packer last)."""
    first, *middle, last = test_pipeline
    flips = [dict(type='RandomFlip', prob=prob, direction='horizontal')
             for prob in (0.0, 1.0)]
    return [first, dict(type='TestTimeAug',
                        transforms=[[t] for t in middle] + [flips, [last]])]


def enable_flip_tta(cfg: Config, config_path: str) -> None:
    """Wrap the model in a test-time augmentation model (``--tta``).

    mmseg's ``SegTTAModel`` averages the softmax of each view's
    ``seg_logits`` and relies on the segmentor to undo the flip (mmseg's
    ``EncoderDecoder`` does, in ``postprocess_result``) and on its
    ``out_channels``. ``CLIPDenseSegmentor`` undoes flips too but stores
    class scores before its background rule, so it gets
    ``CLIPSegTTAModel`` (the views' scores averaged, then the rule) in
    place of the default ``SegTTAModel``. PnP-OVSS undoes no flip: it is
    refused rather than evaluated wrongly.
    """
    from mmseg.models.segmentors import EncoderDecoder
    from mmseg.registry import MODELS

    from mmseg_ovss.models.segmentors.clip_segmentor import \
        CLIPDenseSegmentor
    model_type = cfg.model.get('type')
    try:
        model_cls = MODELS.get(model_type) if isinstance(
            model_type, str) else model_type
    except KeyError:
        model_cls = None
    if not (isinstance(model_cls, type)
            and issubclass(model_cls, EncoderDecoder)):
        raise OVSSConfigError(
            f'--tta: {model_type} (config {config_path}) does not support '
            "test-time augmentation: mmseg's SegTTAModel needs a segmentor "
            "that undoes flips and has out_channels, as mmseg's "
            'EncoderDecoder and the CLIP segmentors. Evaluate it without '
            '--tta (PnP-OVSS reports single-scale, unflipped results).')
    pipeline = cfg.get('tta_pipeline') or flip_tta_pipeline(
        cfg.test_dataloader.dataset.pipeline)
    cfg.test_dataloader.dataset.pipeline = pipeline
    tta_model = dict(cfg.get('tta_model') or dict(type='SegTTAModel'))
    if issubclass(model_cls, CLIPDenseSegmentor) and tta_model.get(
            'type') in ('SegTTAModel', 'mmseg.SegTTAModel'):
        tta_model['type'] = 'CLIPSegTTAModel'
    tta_model['module'] = cfg.model
    cfg.model = tta_model


def main(argv=None):
    """Run the evaluation; returns the metrics dict."""
    args = parse_args(argv)
    init_cpu_process_group(args.launcher)
    cfg = build_cfg(args)
    with trusted_checkpoint_of(cfg):
        runner = Runner.from_cfg(cfg)
        return runner.test()


if __name__ == '__main__':
    main()
    close_process_group()
