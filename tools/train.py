"""Train a segmentor with an mmengine runner (mmseg's train tool, CPU-aware).

Examples:
    python tools/train.py configs/cliprc/<config>.py
    bash tools/dist_train.sh configs/cliprc/<config>.py 8
    python tools/train.py CONFIG --resume            # continue from last checkpoint
"""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))
from mmseg_ovss.engine.launch import (  # noqa: E402
    configure_distributed, default_work_dir, init_cpu_process_group,
    merge_cfg_options, use_fresh_visualizer)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', nargs='?', const='auto', default=None,
        help='resume from the latest checkpoint in the work dir, or from the '
        'checkpoint path given')
    parser.add_argument(
        '--amp', action='store_true', help='enable automatic mixed precision')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings, e.g. train_cfg.max_iters=100; keys must '
        'exist (prefix a key with "+" to add a new one)')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_cfg(args) -> Config:
    cfg = Config.fromfile(args.config)
    merge_cfg_options(cfg, args.cfg_options)
    configure_distributed(cfg, args.launcher)
    use_fresh_visualizer(cfg)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = default_work_dir(args.config)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv=None):
    args = parse_args(argv)
    init_cpu_process_group(args.launcher)
    cfg = build_cfg(args)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


if __name__ == '__main__':
    main()
