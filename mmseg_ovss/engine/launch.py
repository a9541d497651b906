"""Runner set-up shared by ``tools/train.py`` and ``tools/test.py``.

mmengine assumes CUDA when a launcher is used; these helpers make the same
commands work on CPU with gloo (tests, laptops) and on GPUs with NCCL.
"""
import os
import os.path as osp
import uuid

import torch
import torch.distributed as dist
from mmengine.config import Config, ConfigDict, DictAction

from mmseg_ovss.utils.errors import OVSSConfigError


def add_runner_arguments(parser, cfg_options_example: str) -> None:
    """Arguments shared by the train and test tools."""
    parser.add_argument('--work-dir', help='the dir to save logs and outputs')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help=f'override settings, e.g. {cfg_options_example}; keys must '
        'exist (prefix a key with "+" to add a new one)')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_runner_args(parser, argv=None):
    """Parse, and export LOCAL_RANK for launchers that pass --local-rank."""
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_runner_config(args) -> Config:
    """Read the config and apply the shared arguments.

    ``--cfg-options`` (checked keys), launcher and backend, a visualizer of
    this run's own and the work dir (``work_dirs/<config name>`` unless
    given or set by the config).
    """
    cfg = Config.fromfile(args.config)
    merge_cfg_options(cfg, args.cfg_options)
    configure_distributed(cfg, args.launcher)
    use_fresh_visualizer(cfg)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = default_work_dir(args.config)
    return cfg


def init_cpu_process_group(launcher: str) -> None:
    """Create the gloo process group before the Runner on CPU-only machines.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` first, which fails
    without a GPU; when the group already exists the Runner reuses it.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    if dist.is_available() and not dist.is_initialized():
        if 'RANK' not in os.environ:
            raise OVSSConfigError(
                f'--launcher {launcher} expects the environment of torchrun '
                '(RANK, WORLD_SIZE, MASTER_ADDR); start it with '
                'tools/dist_train.sh or tools/dist_test.sh.')
        dist.init_process_group(backend='gloo')


def configure_distributed(cfg: Config, launcher: str) -> None:
    """Set launcher, backend and model wrapper for the machine at hand."""
    cfg.launcher = launcher
    if launcher == 'none':
        return
    if not torch.cuda.is_available():
        cfg.setdefault('env_cfg', ConfigDict())
        cfg.env_cfg.setdefault('dist_cfg', ConfigDict())
        cfg.env_cfg.dist_cfg.backend = 'gloo'
        # SyncBN needs CUDA; plain BN behaves the same per process.
        cfg.model = _replace_syncbn(cfg.model)
    cfg.setdefault('model_wrapper_cfg', dict(type='OVSSDistributedDataParallel'))


def _replace_syncbn(node):
    if isinstance(node, dict):
        out = type(node)()
        for key, value in node.items():
            if key == 'type' and value == 'SyncBN':
                value = 'BN'
            out[key] = _replace_syncbn(value)
        return out
    if isinstance(node, (list, tuple)):
        return type(node)(_replace_syncbn(v) for v in node)
    return node


def merge_cfg_options(cfg: Config, options: dict) -> None:
    """Merge ``--cfg-options``, refusing keys that do not exist.

    A typo such as ``model.decode_head.prob_thr`` would otherwise be added
    silently and never read. A new key is added only when it is prefixed
    with ``+`` (``+custom_hooks=...``); list entries are addressed by index.
    """
    if not options:
        return
    checked = {}
    for key, value in options.items():
        allow_new = key.startswith('+')
        key = key.lstrip('+')
        if not allow_new:
            _check_key_exists(cfg, key)
        checked[key] = value
    cfg.merge_from_dict(checked)


def _check_key_exists(cfg: Config, key: str) -> None:
    node = cfg._cfg_dict if hasattr(cfg, '_cfg_dict') else cfg
    walked = []
    for part in key.split('.'):
        if isinstance(node, (list, tuple)) and part.isdigit():
            index = int(part)
            if index >= len(node):
                raise OVSSConfigError(
                    f'--cfg-options key "{key}": "{".".join(walked)}" has only '
                    f'{len(node)} entries, so index {index} does not exist.')
            node = node[index]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            where = '.'.join(walked) or 'the config root'
            known = ', '.join(sorted(map(str, node.keys()))) if isinstance(
                node, dict) else type(node).__name__
            raise OVSSConfigError(
                f'--cfg-options key "{key}" is unknown: "{part}" does not exist '
                f'under {where} (known: {known}). Fix the spelling, or prefix '
                f'the key with "+" to add a new entry on purpose.')
        walked.append(part)


def default_work_dir(config_path: str) -> str:
    """``work_dirs/<config name>`` like mmseg's tools."""
    return osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def use_fresh_visualizer(cfg: Config) -> None:
    """Give this run's visualizer a name of its own.

    Visualizers are process-wide singletons looked up by name; a second
    runner in the same process (notebooks, in-process tests) would otherwise
    reuse the first one, with its save dir.
    """
    if cfg.get('visualizer'):
        base = cfg.visualizer.get('name', 'visualizer')
        cfg.visualizer.name = f'{base}_{uuid.uuid4().hex[:8]}'
