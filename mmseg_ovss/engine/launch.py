"""Runner set-up shared by ``tools/train.py`` and ``tools/test.py``.

mmengine assumes CUDA when a launcher is used; these helpers make the same
commands work on CPU with gloo (tests, laptops) and on GPUs with NCCL. They
also refuse misspelled keys in a config file (:func:`check_config_keys`),
which mmengine would otherwise ignore.
"""
import difflib
import gc
import inspect
import os
import os.path as osp
import uuid
from typing import Iterable, List, Optional

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

    Misspelled keys of the file (:func:`check_config_keys`),
    ``--cfg-options`` (checked keys), launcher and backend, a visualizer of
    this run's own and the work dir (:func:`default_work_dir` unless
    given with ``--work-dir`` or set by the config).
    """
    cfg = Config.fromfile(args.config)
    check_config_keys(cfg, args.config)
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


def close_process_group() -> None:
    """Destroy the default process group at the end of a successful run.

    A gloo group left to the interpreter's exit can abort the process
    (SIGABRT, "terminate called without an active exception") while its
    worker threads are torn down (pytorch/pytorch#190489); PyTorch asks
    for ``destroy_process_group`` once per process when communication is
    over. Not called after an error, where another rank may still be in a
    collective. The finished runner is collected first: mmengine's Runner
    sits in reference cycles, and its DDP wrapper holds the group, so
    without ``gc.collect()`` the gloo group outlived ``destroy_process_group``
    and was still torn down at interpreter exit (the abort above recurred
    once in a 2-process training test after the destroy call was added).
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


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
    # mmengine reads a top-level find_unused_parameters only when it builds
    # its own wrapper (no model_wrapper_cfg): hand it to ours
    wrapper = dict(type='OVSSDistributedDataParallel')
    if cfg.get('find_unused_parameters'):
        wrapper['find_unused_parameters'] = True
    cfg.setdefault('model_wrapper_cfg', wrapper)


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
    """The work dir of a run without ``--work-dir``: the config's path below
    ``configs/`` under ``work_dirs/`` (``configs/zegclip/x.py`` ->
    ``work_dirs/zegclip/x``), or ``work_dirs/<config name>`` for a config
    outside a ``configs`` folder (mmseg's tools).

    Keeping the method folder matters: ``configs/zegclip`` and
    ``configs/cliprc`` (and others) ship configs of the same file name,
    whose checkpoints and ``last_checkpoint`` (read by ``--resume``) would
    otherwise overwrite each other.
    """
    stem = osp.splitext(osp.basename(config_path))[0]
    # the path as given, else with links resolved (a linked configs folder)
    for path in (osp.abspath(config_path), osp.realpath(config_path)):
        parts = osp.normpath(path).split(osp.sep)
        if 'configs' in parts[:-1]:
            last = len(parts) - 2 - parts[-2::-1].index('configs')
            return osp.join('./work_dirs', *parts[last + 1:-1], stem)
    return osp.join('./work_dirs', stem)


def use_fresh_visualizer(cfg: Config) -> None:
    """Give this run's visualizer a name of its own.

    Visualizers are process-wide singletons looked up by name; a second
    runner in the same process (notebooks, in-process tests) would otherwise
    reuse the first one, with its save dir.
    """
    if cfg.get('visualizer'):
        base = cfg.visualizer.get('name', 'visualizer')
        cfg.visualizer.name = f'{base}_{uuid.uuid4().hex[:8]}'


# ------------------------------------------------------------ config keys
#: Top-level keys read by mmengine's Runner (``Runner.from_cfg`` and its
#: ``cfg.get`` calls) and by mmengine/mmseg tools, besides the arguments of
#: ``Runner.__init__`` (added in :func:`runner_config_keys`).
EXTRA_RUNNER_KEYS = (
    '_base_', 'custom_imports', 'model_wrapper_cfg', 'compile', 'sync_bn',
    'find_unused_parameters', 'activation_checkpointing',
    'efficient_conv_bn_eval', 'tta_model', 'tta_pipeline',
    # read by the package's tools: trusted checkpoints, key-match threshold,
    # the batch over all processes (engine/batch_size.py), mixed precision
    # (engine/amp.py)
    'trust_checkpoint', 'checkpoint_min_match', 'total_batch_size', 'amp')
#: Helper variables of configs that are close to a runner key on purpose.
HELPER_NAMES = ('train_pipeline', 'val_pipeline', 'test_pipeline')
#: Keys of ``env_cfg`` (and its ``mp_cfg``) that mmengine's Runner reads.
ENV_CFG_KEYS = ('cudnn_benchmark', 'mp_cfg', 'dist_cfg', 'resource_limit')
MP_CFG_KEYS = ('mp_start_method', 'opencv_num_threads')
#: ``model.test_cfg`` keys read by mmseg's segmentors and heads and by the
#: segmentors of mmseg_ovss (slide/whole inference).
MODEL_TEST_CFG_KEYS = ('mode', 'crop_size', 'stride', 'size', 'size_divisor',
                       'scale_factor', 'subdivision_steps',
                       # CostVolumeSegmentor's 'catseg_ensemble' mode
                       'kernel', 'overlap', 'ensemble_size')
#: Names of mmengine's default hooks and those of configs/_base_/.
DEFAULT_HOOK_NAMES = ('runtime_info', 'timer', 'sampler_seed', 'logger',
                      'param_scheduler', 'checkpoint', 'visualization',
                      'non_finite_loss', 'learnable_parameters')
#: How close (difflib ratio) an unknown name must be to a known one to be
#: reported as a misspelling where unknown names are otherwise allowed.
CLOSE_MATCH = 0.85


def runner_config_keys() -> List[str]:
    """Every top-level key that mmengine's Runner or the tools read."""
    from mmengine.runner import Runner
    params = [name for name in inspect.signature(Runner.__init__).parameters
              if name not in ('self', 'cfg')]
    return params + list(EXTRA_RUNNER_KEYS)


def check_config_keys(cfg: Config, config_path: str) -> None:
    """Refuse misspelled keys in a config file, naming the closest valid key.

    mmengine reads the keys it knows and ignores the rest, so
    ``test_dataloder = ...`` or ``test_cfg=dict(crop_sise=...)`` would be
    dropped without a word. Checked:

    - top-level names one typo away from a runner key (``test_dataloder``);
      other top-level names are the config's own helper variables
      (``crop_size``, ``img_scale``, ...) and pass;
    - every key of ``env_cfg`` / ``env_cfg.mp_cfg`` and of the segmentor's
      ``model.test_cfg`` (for mmseg's and mmseg_ovss's segmentors; other
      segmentors: names one typo away from a known key);
    - ``default_hooks`` names one typo away from a known hook name (an
      unknown name adds a second hook);
    - the arguments of ``IoUMetric``-based evaluators, which swallow unknown
      keyword arguments.
    """
    problems = []
    runner_keys = runner_config_keys()
    for key in cfg.keys():
        if key in runner_keys or key in HELPER_NAMES:
            continue
        _report_close(problems, key, runner_keys, 'top-level runner key')
    env_cfg = cfg.get('env_cfg')
    if isinstance(env_cfg, dict):
        _report_unknown(problems, env_cfg, ENV_CFG_KEYS, 'env_cfg')
        if isinstance(env_cfg.get('mp_cfg'), dict):
            _report_unknown(problems, env_cfg['mp_cfg'], MP_CFG_KEYS,
                            'env_cfg.mp_cfg')
    _check_model_test_cfg(problems, cfg.get('model'))
    hooks = cfg.get('default_hooks')
    if isinstance(hooks, dict):
        for name in hooks:
            if name not in DEFAULT_HOOK_NAMES:
                _report_close(problems, name, DEFAULT_HOOK_NAMES,
                              'default_hooks name', where='default_hooks.')
    for key in ('val_evaluator', 'test_evaluator'):
        _check_evaluator(problems, cfg.get(key), key)
    if problems:
        raise OVSSConfigError(
            f'config {config_path} (or one of its _base_ files) has '
            f'misspelled key(s):\n  ' + '\n  '.join(problems) +
            '\nmmengine would ignore them; fix the spelling in the config.')


def _report_close(problems: list, key: str, known: Iterable[str],
                  what: str, where: str = '') -> None:
    close = difflib.get_close_matches(key, list(known), n=1,
                                      cutoff=CLOSE_MATCH)
    if close:
        problems.append(f'"{where}{key}" is not a {what}; did you mean '
                        f'"{where}{close[0]}"?')


def _report_unknown(problems: list, node: dict, known: Iterable[str],
                    where: str, strict: bool = True) -> None:
    known = list(known)
    for key in node:
        if key in known or key == 'type':
            continue
        if not strict:
            _report_close(problems, key, known, f'{where} key', f'{where}.')
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = (f'did you mean "{where}.{close[0]}"?' if close else
                f'known keys: {", ".join(known)}')
        problems.append(
            f'"{where}.{key}" is not a key that anything reads; {hint}')


def _registered_class(registry, type_name) -> Optional[type]:
    if not isinstance(type_name, str):
        return type_name if inspect.isclass(type_name) else None
    try:
        return registry.get(type_name)
    except Exception:  # unknown scope or type: the builder will say so
        return None


def _check_model_test_cfg(problems: list, model) -> None:
    if not isinstance(model, dict) or not isinstance(
            model.get('test_cfg'), dict):
        return
    from mmseg.registry import MODELS
    cls = _registered_class(MODELS, model.get('type'))
    module = getattr(cls, '__module__', '') or ''
    strict = module.startswith(('mmseg.', 'mmseg_ovss.'))
    _report_unknown(problems, model['test_cfg'], MODEL_TEST_CFG_KEYS,
                    'model.test_cfg', strict=strict)


def _check_evaluator(problems: list, evaluator, where: str) -> None:
    from mmseg.evaluation import IoUMetric
    from mmseg.registry import METRICS
    items = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        cls = _registered_class(METRICS, item.get('type'))
        if cls is None or not issubclass(cls, IoUMetric):
            continue
        known = set()
        for klass in cls.__mro__:
            init = klass.__dict__.get('__init__')
            if init is None:
                continue
            known.update(
                name for name, param in inspect.signature(init).parameters
                .items() if param.kind not in (param.VAR_KEYWORD,
                                               param.VAR_POSITIONAL)
                and name != 'self')
        label = where if len(items) == 1 else f'{where}.{index}'
        _report_unknown(problems, item, sorted(known), label)
