"""The training batch given as a total over all processes.

A config states ``total_batch_size = 16`` (the papers' "batch 16 in total")
and ``tools/train.py`` sets the per-process
``train_dataloader.batch_size = total_batch_size // world_size``, so
``bash tools/dist_train.sh CFG 8`` and ``bash tools/dist_train.sh CFG 2``
train on the same number of images per iteration (2 and 8 per GPU).
"""
import os
from typing import Optional

from mmengine.config import Config

from mmseg_ovss.utils.errors import OVSSConfigError

#: The config key (registered as a runner key in ``engine/launch.py``).
TOTAL_BATCH_SIZE_KEY = 'total_batch_size'

#: Where each launcher of ``tools/train.py --launcher`` puts the number of
#: processes of the job.
_WORLD_SIZE_VARIABLES = {
    'pytorch': ('WORLD_SIZE', ),
    'slurm': ('SLURM_NTASKS', 'WORLD_SIZE'),
    'mpi': ('OMPI_COMM_WORLD_SIZE', 'PMI_SIZE', 'WORLD_SIZE'),
}


def launcher_world_size(launcher: str = 'none') -> int:
    """Number of training processes, read from the launcher's environment
    (torchrun: ``WORLD_SIZE``; 1 without a launcher)."""
    if launcher in (None, 'none'):
        return 1
    for name in _WORLD_SIZE_VARIABLES.get(launcher, ('WORLD_SIZE', )):
        value = os.environ.get(name)
        if value:
            try:
                size = int(value)
            except ValueError:
                raise OVSSConfigError(
                    f'{name}={value!r} (set by the {launcher} launcher) is '
                    'not a number of processes') from None
            if size < 1:
                raise OVSSConfigError(f'{name}={size}: must be at least 1')
            return size
    return 1


def apply_total_batch_size(cfg: Config, world_size: int) -> Optional[str]:
    """Set the per-process batch size from ``cfg.total_batch_size``.

    Returns the sentence to log (None when the config has no total).

    Raises:
        OVSSConfigError: the total is not a positive integer, or does not
            divide into ``world_size`` processes.
    """
    total = cfg.get(TOTAL_BATCH_SIZE_KEY, None)
    if total is None:
        return None
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise OVSSConfigError(
            f'{TOTAL_BATCH_SIZE_KEY}={total!r}: give the number of images '
            'per iteration summed over all processes, a positive integer '
            '(e.g. 16), or None to use train_dataloader.batch_size as is')
    if not cfg.get('train_dataloader'):
        raise OVSSConfigError(
            f'{TOTAL_BATCH_SIZE_KEY}={total} is set but the config has no '
            'train_dataloader to apply it to')
    if total % world_size:
        raise OVSSConfigError(
            f'{TOTAL_BATCH_SIZE_KEY}={total} images cannot be split evenly '
            f'over {world_size} processes ({total} / {world_size} = '
            f'{total / world_size:g}). Use a number of processes that '
            f'divides {total}, or set total_batch_size to a multiple of '
            f'{world_size} (--cfg-options total_batch_size='
            f'{max(world_size, total // world_size * world_size)}).')
    per_process = total // world_size
    cfg.train_dataloader.batch_size = per_process
    return (f'total batch size {total} over {world_size} process(es): '
            f'train_dataloader.batch_size = {per_process} per process')
