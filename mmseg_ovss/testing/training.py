"""Training runs for tests: in-process, on 2 CPU processes, final weights.

- :func:`train_in_process` runs ``tools/train.py``'s ``main`` in this
  process (no interpreter start-up) and returns the runner;
- :func:`dist_train` runs ``bash tools/dist_train.sh CONFIG N`` (torchrun,
  gloo on a machine without GPUs) with this interpreter, a free port and a
  timeout, and returns the log;
- :func:`final_state_dict` reads the model weights of the last checkpoint
  of a work dir (the one ``last_checkpoint`` names);
- :func:`assert_same_weights` compares two state dicts with a tolerance
  derived from the dtype and the size of the reductions that produced them.

How 2 processes equal 1 process at the same total batch (what the tests
of ``tests/test_training_infra.py`` rely on): mmengine's ``InfiniteSampler``
draws one seeded stream of indices S (a permutation per epoch) and gives
rank r of W the items S[r], S[r + W], S[r + 2W], ... With
``total_batch_size = T`` each rank loads b = T / W of them per iteration,
so iteration i reads S[i*T], ..., S[(i + 1)*T - 1] over all ranks, the
batch of the one-process run. DDP averages the ranks' gradients; for a
loss that is a mean over equally many elements per image (cross-entropy
over fixed-size crops, ``avg_non_ignore=False``), the average of the ranks'
means is the mean over the whole batch, so every update is the same up to
float rounding. What must also hold (the tests set it up): the same seed
(``randomness.seed``; the sampler and the initial weights follow it), a
pipeline without random transforms (each process draws its own augmentation
from its own generator), no batch statistics (BatchNorm normalises per
process: SyncBN needs CUDA; GroupNorm / LayerNorm are per image) and no
dropout or drop path.
"""
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Union

import torch

from mmseg_ovss.testing.tools import run_tool
from mmseg_ovss.utils.errors import OVSSDataError
from mmseg_ovss.utils.paths import find_resource

PathLike = Union[str, Path]


def _options(cfg_options: Optional[Dict]) -> list:
    if not cfg_options:
        return []
    return ['--cfg-options'] + [f'{key}={value}' for key, value in
                                cfg_options.items()]


def train_in_process(config_path: PathLike, work_dir: PathLike,
                     cfg_options: Optional[Dict] = None,
                     extra_args: Sequence = ()):
    """``python tools/train.py CONFIG --work-dir W`` in this process.

    ``cfg_options`` is a dict of ``--cfg-options`` (``{'+amp': True}``
    adds a key); returns the mmengine runner after training.
    """
    return run_tool('train', [config_path, '--work-dir', work_dir,
                              *_options(cfg_options), *extra_args])


def crash_and_resume(config_path: PathLike, work_dir: PathLike,
                     after_iter: int = 2, custom_hooks: Sequence = ()):
    """Train ``config_path`` in ``work_dir`` until a simulated crash after
    iteration ``after_iter`` (``CrashAfterIterHook``, added after
    ``custom_hooks``, which the crashing run's config replaces), then
    ``tools/train.py --resume`` in the same work dir.

    Returns the runner of the resumed run and the text of its log.
    """
    work_dir = Path(work_dir)
    crashing = work_dir.parent / f'{work_dir.name}_crashing.py'
    hooks = ''.join(f'{dict(hook)!r}, ' for hook in custom_hooks)
    crashing.write_text(
        f"_base_ = ['{Path(config_path).as_posix()}']\n"
        f"custom_hooks = [{hooks}"
        f"dict(type='CrashAfterIterHook', after_iter={after_iter})]\n")
    try:
        train_in_process(crashing, work_dir)
    except RuntimeError as error:
        if 'simulated crash' not in str(error):
            raise
    else:
        raise AssertionError(f'{crashing} did not crash')
    last = (work_dir / 'last_checkpoint').read_text()
    assert last.endswith(f'iter_{after_iter}.pth'), last
    before = set(work_dir.glob('*/*.log'))
    runner = train_in_process(config_path, work_dir, extra_args=['--resume'])
    (log, ) = set(work_dir.glob('*/*.log')) - before
    return runner, log.read_text()


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def dist_train(config_path: PathLike, work_dir: PathLike, nproc: int = 2,
               extra_args: Iterable = (), cfg_options: Optional[Dict] = None,
               timeout: float = 900, cwd: Optional[PathLike] = None) -> str:
    """``bash tools/dist_train.sh CONFIG nproc --work-dir W ...``.

    Runs with this interpreter (``PYTHON``), a free ``PORT``, one torch
    thread per process (2 processes on a small machine) and no GPU unless
    the environment has one; returns stdout + stderr.

    Raises:
        AssertionError: the script failed (the end of its log attached).
    """
    script = find_resource('tools') / 'dist_train.sh'
    env = dict(os.environ)
    env.update(PYTHON=sys.executable, PORT=str(free_port()),
               OMP_NUM_THREADS=env.get('OMP_NUM_THREADS', '1'))
    argv = ['bash', str(script), str(config_path), str(nproc),
            '--work-dir', str(work_dir), *_options(cfg_options),
            *(str(a) for a in extra_args)]
    try:
        proc = subprocess.run(argv, cwd=str(cwd or Path(work_dir).parent),
                              env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as err:
        log = (err.stdout or b'') + (err.stderr or b'')
        if isinstance(log, bytes):
            log = log.decode(errors='replace')
        raise AssertionError(f'dist_train.sh did not finish in {timeout} s:'
                             f'\n{log[-4000:]}') from None
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f'dist_train.sh exited with {proc.returncode}:\n{log[-4000:]}')
    return log


def final_state_dict(work_dir: PathLike) -> Dict[str, torch.Tensor]:
    """Model weights of the checkpoint ``<work_dir>/last_checkpoint`` names
    (``module.`` prefixes of a DDP run removed)."""
    from mmengine.runner.checkpoint import CheckpointLoader
    pointer = Path(work_dir) / 'last_checkpoint'
    if not pointer.is_file():
        raise OVSSDataError(
            f'{pointer} does not exist: the run saved no checkpoint (set '
            'default_hooks.checkpoint.interval or save_last=True)')
    path = pointer.read_text().strip()
    if not Path(path).is_absolute():
        path = str(Path(work_dir) / Path(path).name)
    checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    state = checkpoint.get('state_dict', checkpoint)
    return {key[len('module.'):] if key.startswith('module.') else key:
            value for key, value in state.items()}


def weight_tolerance(dtype: torch.dtype, reduction_size: int,
                     steps: int = 1, factor: float = 8.0) -> float:
    """Relative tolerance of two trainings that differ in summation order.

    Each reduction of n terms in ``dtype`` is exact up to about
    ``eps * sqrt(n)`` of its magnitude (random-walk rounding); each of
    ``steps`` updates adds one such error, so the weights agree to
    ``factor * eps * sqrt(n) * steps`` of their scale.
    """
    eps = torch.finfo(dtype).eps
    return factor * eps * math.sqrt(max(1, reduction_size)) * max(1, steps)


def assert_same_weights(a: Dict[str, torch.Tensor],
                        b: Dict[str, torch.Tensor],
                        dtype: torch.dtype = torch.float32,
                        reduction_size: int = 1, steps: int = 1,
                        factor: float = 8.0) -> float:
    """Assert two state dicts hold the same tensors.

    Floating tensors must agree to ``tol`` = :func:`weight_tolerance` of
    each tensor's scale (its largest magnitude), other tensors exactly.
    Returns the largest relative difference seen (for the report).
    """
    assert a.keys() == b.keys(), (
        f'different keys: only in the first {sorted(a.keys() - b.keys())}, '
        f'only in the second {sorted(b.keys() - a.keys())}')
    tol = weight_tolerance(dtype, reduction_size, steps, factor)
    worst = 0.0
    for key in a:
        x, y = a[key], b[key]
        assert x.shape == y.shape, f'{key}: shape {x.shape} != {y.shape}'
        if not x.is_floating_point():
            assert torch.equal(x, y), f'{key} differs'
            continue
        x, y = x.double(), y.double()
        scale = max(float(x.abs().max()), float(y.abs().max()),
                    torch.finfo(dtype).tiny)
        diff = float((x - y).abs().max()) / scale
        worst = max(worst, diff)
        assert diff <= tol, (
            f'{key}: largest difference {diff:.3g} of the tensor scale '
            f'{scale:.3g} exceeds {tol:.3g} ({dtype}, reductions of '
            f'{reduction_size}, {steps} step(s))')
    return worst


#: The names used in the shared API notes.
train_tiny = train_in_process
final_weights = final_state_dict
