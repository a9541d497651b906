"""Train a segmentor with an mmengine runner (mmseg's train tool, CPU-aware).

Examples:
    python tools/train.py configs/cliprc/<config>.py
    bash tools/dist_train.sh configs/cliprc/<config>.py 8
    python tools/train.py CONFIG --resume            # continue from last checkpoint
    python tools/train.py CONFIG --amp               # fp16 on GPU, bf16 on CPU

A config's ``total_batch_size = 16`` is the batch summed over all processes:
each of the N processes of ``dist_train.sh CFG N`` loads 16 / N images per
iteration (``mmseg_ovss/engine/batch_size.py``); ``amp = True`` or ``--amp``
trains in mixed precision (``mmseg_ovss/engine/amp.py``). See
docs/training.md.
"""
import argparse
import os.path as osp
import sys
from typing import List, Optional

from mmengine.config import Config
from mmengine.runner import Runner

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))
from mmseg_ovss.engine.amp import apply_amp  # noqa: E402
from mmseg_ovss.engine.batch_size import (  # noqa: E402
    apply_total_batch_size, launcher_world_size)
from mmseg_ovss.engine.checkpoint import (  # noqa: E402
    TRUST_CHECKPOINT_KEY, add_checkpoint_check, add_trust_argument,
    check_checkpoint_file, checkpoint_seed, resolve_resume,
    trusted_checkpoint_of)
from mmseg_ovss.engine.launch import (  # noqa: E402
    add_runner_arguments, close_process_group, init_cpu_process_group,
    load_runner_config, parse_runner_args)
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
        '--amp', action='store_true',
        help='mixed precision (as amp = True in the config): float16 with a '
        'dynamic loss scale on GPU, bfloat16 on CPU')
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


def continue_with_checkpoint_seed(cfg: Config) -> Optional[str]:
    """Start a resumed run with the seed of the run it continues.

    mmengine builds the data sampler (and seeds the dataloader workers)
    from ``randomness.seed`` before ``Runner.resume`` restores the
    checkpoint's seed; without a fixed seed in the config (mmseg's default)
    the resumed run would skip ``iter`` batches of another permutation,
    training some images twice and others never in that epoch. Returns a
    sentence for the log when the config's own seed is overridden."""
    seed = checkpoint_seed(cfg.load_from)
    if seed is None:
        return None
    randomness = dict(cfg.get('randomness') or {})
    configured = randomness.get('seed')
    randomness['seed'] = seed
    cfg.randomness = randomness
    if configured is not None and configured != seed:
        return (f'--resume: randomness.seed={configured} of the config is '
                f'replaced by the seed {seed} of the run that saved '
                f'{cfg.load_from}, so that the data order continues')
    return None


def build_cfg(args, notes: Optional[List[str]] = None) -> Config:
    """The runner config of ``args``; sentences for the log (total batch
    size, mixed precision) are appended to ``notes``."""
    cfg = load_runner_config(args)
    check_trainable(cfg, args.config)
    if args.trust_checkpoint:
        cfg[TRUST_CHECKPOINT_KEY] = True
    notes = [] if notes is None else notes
    for note in (apply_total_batch_size(cfg,
                                        launcher_world_size(args.launcher)),
                 apply_amp(cfg, args.amp)):
        if note:
            notes.append(note)
    if args.resume is not None:
        # 'auto': <work_dir>/last_checkpoint; nothing to resume, a missing
        # or cut file is an error that names the file and the fix
        cfg.resume = True
        cfg.load_from = resolve_resume(cfg.work_dir, args.resume)
        add_checkpoint_check(cfg, cfg.load_from)
        note = continue_with_checkpoint_seed(cfg)
        if note:
            notes.append(note)
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
    notes = []
    cfg = build_cfg(args, notes)
    with trusted_checkpoint_of(cfg):
        runner = Runner.from_cfg(cfg)
        for note in notes:
            runner.logger.info(note)
        runner.train()
    return runner


if __name__ == '__main__':
    main()
    close_process_group()
