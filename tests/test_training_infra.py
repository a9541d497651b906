"""Shared training infrastructure on the tiny SegFormer, end to end.

- ``total_batch_size``: the per-process batch is the total over the
  processes; an uneven split is refused naming both numbers;
- 2 gloo processes train the same weights as 1 process at the same total
  batch (``mmseg_ovss.testing.training`` explains why they must);
- a run that crashes after iteration 2 and is resumed ends with the
  uninterrupted run's weights (mixed precision on, so the wrapper's state
  travels through the checkpoint);
- ``amp = True`` / ``--amp`` trains in bfloat16 autocast on CPU;
- ``LearnableParametersHook`` logs the counts and finds gradient buffers
  of weights that do not train.
"""
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub, MMLogger
from mmengine.optim import OptimWrapper
from mmseg.models import EncoderDecoder
from mmseg.registry import MODELS
from torch import nn

import mmseg_ovss.testing.hooks  # noqa: F401  (CrashAfterIterHook)
from mmseg_ovss.engine.amp import OVSSAmpOptimWrapper, apply_amp
from mmseg_ovss.engine.batch_size import (apply_total_batch_size,
                                          launcher_world_size)
from mmseg_ovss.engine.checkpoint import checkpoint_seed
from mmseg_ovss.engine.launch import (check_config_keys, close_process_group,
                                      default_work_dir, load_runner_config)
from mmseg_ovss.engine.parameters import (LearnableParametersHook,
                                          count_parameters)
from mmseg_ovss.testing.tiny_configs import tiny_segformer_config
from mmseg_ovss.testing.tiny_datasets import (exported_data_root,
                                              make_tiny_dataset)
from mmseg_ovss.testing.tools import load_tool
from mmseg_ovss.testing.training import (assert_same_weights, crash_and_resume,
                                         dist_train, final_state_dict,
                                         free_port, train_in_process,
                                         weight_tolerance)
from mmseg_ovss.utils.errors import OVSSConfigError

VOC_LOADER = "dict(type='LoadCheckedAnnotations')"
CROP = 32
NUM_IMAGES = 4

# A deterministic variant of the tiny SegFormer (see
# mmseg_ovss/testing/training.py): fixed-size resize instead of random
# crops and flips, GroupNorm instead of (per-process) BatchNorm in the head,
# SGD so that an update is linear in the gradient (Adam's g / sqrt(v)
# magnifies the rounding of near-zero gradient entries), at a constant
# learning rate large enough that each step moves the weights far beyond
# the comparison's tolerance.
_DETERMINISTIC = """
_base_ = ['{base}']
model = dict(decode_head=dict(
    norm_cfg=dict(type='GN', num_groups=1, requires_grad=True)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    {loader},
    dict(type='Resize', scale=({crop}, {crop}), keep_ratio=False),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
total_batch_size = 2
optim_wrapper = dict(optimizer=dict(
    _delete_=True, type='SGD', lr=0.5, momentum=0.9, weight_decay=1e-4))
param_scheduler = []  # a constant learning rate: every step moves weights
"""


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('train_infra_data')
    make_tiny_dataset('voc21', root, num_images=NUM_IMAGES,
                      image_size=(48, 64))
    with exported_data_root(root):
        yield root


def _config(tmp_path: Path, iters: int, interval: int = 1,
            extra: str = '') -> Path:
    base = tmp_path / 'tiny_voc21.py'
    base.write_text(tiny_segformer_config(
        'voc21', 21, VOC_LOADER, train_iters=iters,
        checkpoint_interval=interval, crop=CROP))
    path = tmp_path / 'tiny_voc21_deterministic.py'
    path.write_text(_DETERMINISTIC.format(
        base=base.as_posix(), loader=VOC_LOADER, crop=CROP) + extra)
    return path


def _checkpoint(path: Path) -> dict:
    from mmengine.runner.checkpoint import CheckpointLoader
    return CheckpointLoader.load_checkpoint(str(path),
                                            map_location='cpu')['state_dict']


def _largest_difference(a: dict, b: dict) -> float:
    """Largest difference of two state dicts, relative to each tensor's
    largest magnitude (the measure of ``assert_same_weights``)."""
    return max(float((a[k].double() - b[k].double()).abs().max()) /
               max(float(a[k].abs().max()), 1e-30)
               for k in a if a[k].is_floating_point())


def _log(work_dir: Path) -> str:
    logs = sorted(work_dir.glob('*/*.log'))
    assert logs, f'no log under {work_dir}'
    return logs[-1].read_text()


# ------------------------------------------------------ total batch size
def test_total_batch_size_sets_the_per_process_batch(monkeypatch, data_root,
                                                     tmp_path):
    tool = load_tool('train')
    config = _config(tmp_path, iters=1)
    check_config_keys(Config.fromfile(config), str(config))
    for world, expected in ((1, 2), (2, 1)):
        monkeypatch.setenv('WORLD_SIZE', str(world))
        notes = []
        cfg = tool.build_cfg(tool.parse_args(
            [str(config), '--launcher', 'pytorch' if world > 1 else 'none',
             '--work-dir', str(tmp_path / 'w')]), notes)
        assert cfg.train_dataloader.batch_size == expected
        assert notes == [f'total batch size 2 over {world} process(es): '
                         f'train_dataloader.batch_size = {expected} per '
                         'process']
    monkeypatch.setenv('WORLD_SIZE', '3')
    with pytest.raises(OVSSConfigError) as info:
        tool.build_cfg(tool.parse_args([str(config), '--launcher', 'pytorch',
                                        '--work-dir', str(tmp_path / 'w')]))
    message = str(info.value)
    assert 'total_batch_size=2' in message and 'over 3 processes' in message
    assert '--cfg-options total_batch_size=3' in message


def test_total_batch_size_values():
    cfg = Config(dict(total_batch_size=16, train_dataloader=dict(
        batch_size=2)))
    apply_total_batch_size(cfg, 8)
    assert cfg.train_dataloader.batch_size == 2
    apply_total_batch_size(cfg, 4)
    assert cfg.train_dataloader.batch_size == 4
    untouched = Config(dict(train_dataloader=dict(batch_size=5)))
    assert apply_total_batch_size(untouched, 4) is None
    assert untouched.train_dataloader.batch_size == 5
    for bad in (0, 2.5, True):
        with pytest.raises(OVSSConfigError, match='positive integer'):
            apply_total_batch_size(Config(dict(
                total_batch_size=bad, train_dataloader=dict())), 1)
    with pytest.raises(OVSSConfigError, match='no train_dataloader'):
        apply_total_batch_size(Config(dict(total_batch_size=4)), 1)
    assert launcher_world_size('none') == 1


# ------------------------------------------------ 2 processes = 1 process
def test_two_processes_train_the_weights_of_one(data_root, tmp_path):
    """Same total batch (2): 2 gloo processes x 1 image = 1 process x 2
    images, 3 iterations (over an epoch boundary of the 4 images)."""
    iters = 3
    config = _config(tmp_path, iters=iters, interval=1)
    single = tmp_path / 'single'
    train_in_process(config, single)
    log = dist_train(config, tmp_path / 'dist', nproc=2)
    assert 'Distributed training: True' in log
    assert 'train_dataloader.batch_size = 1 per process' in log
    assert 'train_dataloader.batch_size = 2 per process' in _log(single)
    one, two = final_state_dict(single), final_state_dict(tmp_path / 'dist')
    # the largest reductions: the loss and weight gradients over the
    # 2 x 32 x 32 pixels of an iteration
    size = 2 * CROP * CROP
    assert_same_weights(one, two, torch.float32, reduction_size=size,
                        steps=iters)
    # one iteration moves the weights far beyond that tolerance
    assert _largest_difference(_checkpoint(single / 'iter_2.pth'), one) > \
        100 * weight_tolerance(torch.float32, size, iters)


@MODELS.register_module(force=True)
class EncoderDecoderWithUnusedBranch(EncoderDecoder):
    """mmseg's EncoderDecoder with a trainable layer the loss never uses
    (a branch some ablations switch off)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.unused = nn.Linear(4, 4)


def test_find_unused_parameters_reaches_ddp(data_root, tmp_path,
                                            monkeypatch):
    """The top-level ``find_unused_parameters = True`` (mmengine reads it
    only for its own wrapper) reaches the package's DDP wrapper: a model
    with an unused trainable layer trains under ``--launcher pytorch``
    (one gloo process) instead of failing DDP's reduction check."""
    config = _config(tmp_path, iters=2, interval=1, extra=(
        "model = dict(type='EncoderDecoderWithUnusedBranch')\n"
        'find_unused_parameters = True\n'))
    for name, value in dict(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0',
                            MASTER_ADDR='127.0.0.1',
                            MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    try:
        runner = train_in_process(config, tmp_path / 'ddp',
                                  extra_args=['--launcher', 'pytorch'])
    finally:
        close_process_group()
    assert runner.model.find_unused_parameters is True
    assert 'Iter(train) [2/2]' in _log(tmp_path / 'ddp')


# ------------------------------------------------------------ resume
def test_resume_after_crash_matches_uninterrupted_run(data_root, tmp_path):
    """Mixed precision (bf16 on CPU) and the total batch size on, crash
    after iteration 2, ``--resume``: the final weights are the
    uninterrupted run's (same process, same operations)."""
    config = _config(tmp_path, iters=4, interval=1, extra='amp = True\n')
    reference = tmp_path / 'uninterrupted'
    train_in_process(config, reference)
    crashed = tmp_path / 'crashed'
    runner, text = crash_and_resume(config, crashed)
    assert isinstance(runner.optim_wrapper, OVSSAmpOptimWrapper)
    assert 'resumed epoch: 0, iter: 2' in text
    assert 'Iter(train) [3/4]' in text and 'Iter(train) [1/4]' not in text
    assert_same_weights(final_state_dict(reference),
                        final_state_dict(crashed), torch.float32,
                        reduction_size=1)
    # the last iteration moved the weights: the comparison is of trained
    # weights
    assert _largest_difference(_checkpoint(crashed / 'iter_3.pth'),
                               final_state_dict(crashed)) > \
        100 * weight_tolerance(torch.float32, 1)


def test_resume_without_a_fixed_seed_continues_the_data_order(data_root,
                                                              tmp_path):
    """mmseg's default ``randomness = dict(seed=None)``: the crashed run drew
    a seed; ``--resume`` starts with it (mmengine restores it only after
    building the sampler from a new one), so the resumed run trains the
    images, and ends with the weights, of an uninterrupted run with that
    seed."""
    config = _config(tmp_path, iters=4, interval=1,
                     extra='randomness = dict(seed=None)\n')
    crashed = tmp_path / 'crashed'
    runner, _ = crash_and_resume(config, crashed)
    seed = checkpoint_seed(str(crashed / 'iter_2.pth'))
    assert seed is not None
    assert runner.seed == seed
    assert runner.train_dataloader.sampler.seed == seed
    config = _config(tmp_path, iters=4, interval=1,
                     extra=f'randomness = dict(seed={seed})\n')
    reference = tmp_path / 'uninterrupted'
    train_in_process(config, reference)
    assert_same_weights(final_state_dict(reference),
                        final_state_dict(crashed), torch.float32,
                        reduction_size=1)


def test_resume_replaces_another_configured_seed(data_root, tmp_path):
    config = _config(tmp_path, iters=1, interval=1)  # randomness.seed=0
    work = tmp_path / 'run'
    train_in_process(config, work)  # iter_1.pth, saved with seed 0
    cfg = Config.fromfile(config)
    cfg.work_dir = str(work)
    cfg.load_from = str(work / 'iter_1.pth')
    continue_with_checkpoint_seed = load_tool(
        'train').continue_with_checkpoint_seed
    assert continue_with_checkpoint_seed(cfg) is None
    cfg.randomness = dict(seed=7, deterministic=False)
    note = continue_with_checkpoint_seed(cfg)
    assert cfg.randomness == dict(seed=0, deterministic=False)
    assert 'randomness.seed=7' in note and 'seed 0' in note


# --------------------------------------------------------------- AMP
def test_amp_trains_in_bfloat16_on_cpu(data_root, tmp_path):
    config = _config(tmp_path, iters=2, interval=1)
    work = tmp_path / 'amp'
    runner = train_in_process(config, work, extra_args=['--amp'])
    wrapper = runner.optim_wrapper
    assert isinstance(wrapper, OVSSAmpOptimWrapper)
    assert wrapper.cast_dtype == torch.bfloat16
    assert wrapper.loss_scaler is None
    log = _log(work)
    assert 'mixed precision on cpu: autocast to bfloat16, no loss scale' in log
    losses = [float(v) for v in re.findall(r'Iter\(train\) \[\d/2\].* loss: '
                                           r'([-0-9.e]+)', log)]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    # the forward runs in bfloat16 inside the wrapper's context ...
    model = runner.model
    images = torch.rand(1, 3, CROP, CROP)
    with wrapper.optim_context(model):
        features = model.backbone(images)
    assert features[0].dtype == torch.bfloat16
    # ... and each step changes the float32 weights
    first = _checkpoint(work / 'iter_1.pth')
    second = final_state_dict(work)
    assert all(v.dtype == torch.float32 for v in second.values()
               if v.is_floating_point())
    changed = [k for k in first if first[k].is_floating_point()
               and not torch.equal(first[k], second[k])]
    assert 'decode_head.conv_seg.weight' in changed
    assert len(changed) > len(first) // 2


def test_amp_config_switch_and_errors():
    cfg = Config(dict(amp=True, optim_wrapper=dict(
        type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1))))
    note = apply_amp(cfg)
    assert cfg.optim_wrapper.type == 'OVSSAmpOptimWrapper'
    if not torch.cuda.is_available():
        assert cfg.optim_wrapper.dtype == 'bfloat16'
        assert note.startswith('mixed precision on cpu: autocast to bfloat16')
        with pytest.raises(OVSSConfigError, match='bfloat16 only'):
            OVSSAmpOptimWrapper(optimizer=torch.optim.SGD(
                [nn.Parameter(torch.zeros(1))], lr=0.1), dtype='float16')
    assert apply_amp(Config(dict(optim_wrapper=dict()))) is None
    with pytest.raises(OVSSConfigError, match='True .* or False'):
        apply_amp(Config(dict(amp='yes', optim_wrapper=dict())))
    with pytest.raises(OVSSConfigError, match="'ColossalAIOptimWrapper'"):
        apply_amp(Config(dict(optim_wrapper=dict(
            type='ColossalAIOptimWrapper'))), enabled=True)


# ------------------------------------------------------ parameter counts
class _Frozen(nn.Module):
    """backbone Linear(4, 3) frozen (15), head Conv2d(3, 2, 1) (8), and a
    model-level scale (1)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 3)
        self.backbone.requires_grad_(False)
        self.decode_head = nn.Conv2d(3, 2, 1)
        self.scale = nn.Parameter(torch.ones(1))


def test_count_parameters_by_hand():
    counts = count_parameters(_Frozen())
    assert (counts['total'], counts['learnable'], counts['frozen']) == \
        (24, 9, 15)
    assert counts['per_module'] == {
        'backbone': dict(total=15, learnable=0, frozen=15),
        'decode_head': dict(total=8, learnable=8, frozen=0),
        '(own)': dict(total=1, learnable=1, frozen=0)}
    shared = nn.Module()
    shared.a = nn.Linear(2, 2)
    shared.b = shared.a
    assert count_parameters(shared)['total'] == 6


def _runner(model, optimizer_params, strict=False):
    hub = MessageHub.get_instance('test_learnable_parameters')
    logger = MMLogger.get_instance('test_learnable_parameters')
    optim = OptimWrapper(torch.optim.SGD(optimizer_params, lr=0.1))
    return SimpleNamespace(model=model, optim_wrapper=optim, logger=logger,
                           message_hub=hub), LearnableParametersHook(strict)


def test_parameters_hook_finds_gradients_of_weights_that_do_not_train(
        caplog):
    model = _Frozen()
    # the scale requires gradients but is in no optimiser group
    runner, hook = _runner(model, list(model.decode_head.parameters()))
    hook.before_train(runner)
    assert runner.message_hub.get_info('parameter_counts')['learnable'] == 9
    model.decode_head(torch.rand(1, 3, 2, 2)).mul(model.scale).sum() \
        .backward()
    runner.optim_wrapper.step()
    runner.optim_wrapper.zero_grad()
    hook.after_train_iter(runner, 0)
    assert runner.message_hub.get_info('frozen_params_with_grad') == 1
    strict_runner, strict = _runner(model, list(
        model.decode_head.parameters()), strict=True)
    with pytest.raises(OVSSConfigError, match=r'1 parameter\(s\) .* are in '
                       r'no optimiser group.*: scale'):
        strict.before_train(strict_runner)
    with pytest.raises(OVSSConfigError, match='outside the optimiser hold '
                       'gradient buffers.*scale'):
        strict.after_train_iter(strict_runner, 0)
    # everything that requires gradients in the optimiser: no complaint
    clean = _Frozen()
    runner, hook = _runner(clean, [p for p in clean.parameters()
                                   if p.requires_grad], strict=True)
    hook.before_train(runner)
    clean.decode_head(torch.rand(1, 3, 2, 2)).mul(clean.scale).sum() \
        .backward()
    runner.optim_wrapper.step()
    runner.optim_wrapper.zero_grad()
    hook.after_train_iter(runner, 0)
    assert runner.message_hub.get_info('frozen_params_with_grad') == 0
    assert clean.backbone.weight.grad is None


def test_parameter_table_in_the_training_log(data_root, tmp_path):
    config = _config(tmp_path, iters=1, interval=1)
    work = tmp_path / 'params'
    runner = train_in_process(config, work)
    counts = runner.message_hub.get_info('parameter_counts')
    model = runner.model
    assert counts['total'] == sum(p.numel() for p in model.parameters())
    assert set(counts['per_module']) == {'backbone', 'decode_head'}
    log = _log(work)
    total_m = f'{counts["total"] / 1e6:.4f}'
    assert (f'parameters of EncoderDecoder: learnable {total_m} M, frozen '
            f'0.0000 M, total {total_m} M') in log
    assert re.search(r'decode_head\s+[0-9.]+\s+0\.0000\s+[0-9.]+', log)
    assert 'no frozen parameter holds a gradient buffer' in log


REPO = Path(__file__).resolve().parents[1]


def test_default_work_dir_mirrors_the_path_below_configs():
    assert default_work_dir('configs/zegclip/vit-b16_voc-15-5_inductive.py') \
        == './work_dirs/zegclip/vit-b16_voc-15-5_inductive'
    absolute = REPO / 'configs/cliprc/ablations/ram_cls.py'
    assert default_work_dir(str(absolute)) == \
        './work_dirs/cliprc/ablations/ram_cls'
    # outside a configs folder: mmseg's work_dirs/<config name>
    assert default_work_dir('/tmp/mine/my_run.py') == './work_dirs/my_run'
    assert default_work_dir('my_run.py') == './work_dirs/my_run'


def test_default_work_dir_through_a_linked_configs_folder(tmp_path):
    # the package's configs reached through a link of another name: the
    # method folder still separates zegclip/x from cliprc/x
    link = tmp_path / 'my_configs'
    link.symlink_to(REPO / 'configs', target_is_directory=True)
    for method in ('zegclip', 'cliprc'):
        path = link / method / 'vit-b16_voc-15-5_inductive.py'
        assert default_work_dir(str(path)) == \
            f'./work_dirs/{method}/vit-b16_voc-15-5_inductive'


def test_shipped_configs_never_share_a_default_work_dir():
    """configs/cliprc/X.py and configs/zegclip/X.py (and other methods'
    namesakes) must not overwrite or resume each other's checkpoints."""
    dirs = {}
    for path in sorted((REPO / 'configs').rglob('*.py')):
        if '_base_' in path.parts:
            continue
        dirs.setdefault(default_work_dir(str(path)), []).append(path)
    shared = {d: p for d, p in dirs.items() if len(p) > 1}
    assert not shared
    zeg = default_work_dir('configs/zegclip/vit-b16_voc-15-5_inductive.py')
    rc = default_work_dir('configs/cliprc/vit-b16_voc-15-5_inductive.py')
    assert zeg != rc


def test_work_dir_option_overrides_the_default():
    config = str(REPO / 'configs/zegclip/vit-b16_voc-15-5_inductive.py')
    args = SimpleNamespace(config=config, cfg_options=None, launcher='none',
                           work_dir=None)
    assert load_runner_config(args).work_dir == \
        './work_dirs/zegclip/vit-b16_voc-15-5_inductive'
    args.work_dir = 'elsewhere/run'
    assert load_runner_config(args).work_dir == 'elsewhere/run'
