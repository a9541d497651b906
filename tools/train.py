"""Train a segmentor with an mmengine runner (mmseg's train tool, CPU-aware).

Examples:
    python tools/train.py configs/cliprc/<config>.py
    bash tools/dist_train.sh configs/cliprc/<config>.py 8
    python tools/train.py CONFIG --resume            # continue from last checkpoint
"""
import argparse
import os.path as osp
import sys

from mmengine.config import Config
from mmengine.runner import Runner

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))
from mmseg_ovss.engine.checkpoint import (  # noqa: E402
    TRUST_CHECKPOINT_KEY, add_checkpoint_check, add_trust_argument,
    check_checkpoint_file, resolve_resume, trusted_checkpoint_of)
from mmseg_ovss.engine.launch import (  # noqa: E402
    add_runner_arguments, init_cpu_process_group, load_runner_config,
    parse_runner_args)
from mmseg_ovss.utils.errors import OVSSConfigError  # noqa: E402

#: What a config needs to train (mmengine's Runner builds a train loop only
#: from all three).
TRAINING_KEYS = ('train_dataloader', 'train_cfg', 'optim_wrapper')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--resume', nargs='?', const='auto', default=None,
        help='resume from the latest checkpoint in the work dir, or from the '
        'checkpoint path given')
    parser.add_argument(
        '--amp', action='store_true', help='enable automatic mixed precision')
    add_trust_argument(parser)
    add_runner_arguments(parser, 'train_cfg.max_iters=100')
    return parse_runner_args(parser, argv)


def check_trainable(cfg: Config, config_path: str) -> None:
    """Refuse a config without a training set-up before building the model.

    The training-free configs (CLIP baselines, FreeCP, PnP-OVSS) set
    ``train_dataloader = None`` and have no ``optim_wrapper``; mmengine would
    build the whole model (and download its weights) before failing.
    """
    missing = [key for key in TRAINING_KEYS if not cfg.get(key)]
    if not missing:
        return
    model = cfg.get('model') or {}
    raise OVSSConfigError(
        f'config {config_path} cannot be trained: it has no '
        f'{", ".join(missing)} (model {model.get("type")}). A training-free '
        f'config is evaluated, not trained: python tools/test.py '
        f'{config_path} (no checkpoint needed). To train, the config needs '
        f'{", ".join(TRAINING_KEYS)}: inherit a dataset base that has a '
        'train_dataloader and a schedule such as '
        'configs/_base_/schedules/schedule_80k.py.')


def build_cfg(args) -> Config:
    cfg = load_runner_config(args)
    check_trainable(cfg, args.config)
    if args.trust_checkpoint:
        cfg[TRUST_CHECKPOINT_KEY] = True
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume is not None:
        # 'auto': <work_dir>/last_checkpoint; nothing to resume, a missing
        # or cut file is an error that names the file and the fix
        cfg.resume = True
        cfg.load_from = resolve_resume(cfg.work_dir, args.resume)
        add_checkpoint_check(cfg, cfg.load_from)
    elif cfg.get('load_from'):
        # initial weights for fine-tuning: the same checks as tools/test.py
        # (a URL is fetched by mmengine; only its keys are checked)
        if '://' not in str(cfg.load_from):
            check_checkpoint_file(cfg.load_from)
        add_checkpoint_check(cfg, cfg.load_from)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    init_cpu_process_group(args.launcher)
    cfg = build_cfg(args)
    with trusted_checkpoint_of(cfg):
        runner = Runner.from_cfg(cfg)
        runner.train()
    return runner


if __name__ == '__main__':
    main()
