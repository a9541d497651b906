"""The learning-rate rule of ZegCLIP and CLIP-RC as one mmengine scheduler.

Both authors' codes use mmcv's ``lr_config = dict(policy='poly', power=0.9,
min_lr=1e-6, warmup='linear', warmup_iters=1500, warmup_ratio=1e-6)``
(ZiqinZhou66/ZegCLIP ``configs/voc12/*.py``; Jittor/JSeg
``project/clip_rc/*/*.py`` with ``python/jseg/optims/lr_scheduler.py``
``PolyLR`` / ``WarmUpLR``, which follows mmcv's ``lr_updater.py``):

    poly(i)   = (base_lr - min_lr) * (1 - i / max_iters) ** power + min_lr
    warmup(i) = 1 - (1 - i / warmup_iters) * (1 - warmup_ratio)
                (i < warmup_iters)
    lr(i)     = poly(i) * warmup(i)   (poly(i) after the warm-up)

The poly decay runs over the whole run and the warm-up multiplies it.
mmengine's ``LinearLR`` + ``PolyLR`` cannot give this exactly: ``PolyLR``
starting after the warm-up decays from the full lr at iteration 1500
(3.5 % above the authors' lr for the rest of a 40k run), and one overlapping
the warm-up is chained onto the warm-up's lr together with ``eta_min``
(0.1-0.5 % off after the warm-up, more near its end).
"""
from typing import Optional

from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import _ParamScheduler
from mmseg.registry import PARAM_SCHEDULERS

from mmseg_ovss.utils.errors import OVSSConfigError


def warmup_poly_lr(base_lr: float, step: int, total: int, power: float,
                   eta_min: float, warmup_iters: int,
                   warmup_ratio: float) -> float:
    """The authors' (mmcv's) lr at ``step`` of ``total`` (module docstring)."""
    lr = (base_lr - eta_min) * (1 - step / total) ** power + eta_min
    if step < warmup_iters:
        lr *= 1 - (1 - step / warmup_iters) * (1 - warmup_ratio)
    return lr


@PARAM_SCHEDULERS.register_module()
class WarmupPolyLR(LRSchedulerMixin, _ParamScheduler):
    """Poly decay over ``begin..end`` multiplied by a linear warm-up over
    the first ``warmup_iters`` steps, in closed form from each parameter
    group's initial lr (so resuming and ``lr_mult`` groups are exact).

    Args:
        optimizer: the wrapped optimizer.
        power (float): poly power (0.9).
        eta_min (float): mmcv's ``min_lr``, absolute for every group (1e-6).
        warmup_iters (int): warm-up steps (1500); 0 turns it off.
        warmup_ratio (float): warm-up start as a fraction of the lr (1e-6).
        begin, end (int): steps of the decay (0, ``max_iters``).
        by_epoch, last_step, verbose: as mmengine's schedulers.
    """

    def __init__(self, optimizer, power: float = 0.9, eta_min: float = 0.,
                 warmup_iters: int = 0, warmup_ratio: float = 1e-6,
                 begin: int = 0, end: int = 0, last_step: int = -1,
                 by_epoch: bool = False, verbose: bool = False):
        if not 0 <= begin < end:
            raise OVSSConfigError(
                f'WarmupPolyLR: begin={begin}, end={end}; the decay needs '
                '0 <= begin < end (end: the run\'s max_iters)')
        if not 0 <= warmup_iters <= end - begin:
            raise OVSSConfigError(
                f'WarmupPolyLR: warmup_iters={warmup_iters} must lie in '
                f'0..{end - begin} (the decay\'s length); lower it')
        if not 0 < warmup_ratio <= 1:
            raise OVSSConfigError(
                f'WarmupPolyLR: warmup_ratio={warmup_ratio} must be in '
                '(0, 1] (the warm-up starts at warmup_ratio x lr)')
        self.power = power
        self.eta_min = eta_min
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.total_iters = end - begin
        super().__init__(optimizer, begin=begin, end=end,
                         last_step=last_step, by_epoch=by_epoch,
                         verbose=verbose)

    @classmethod
    def build_iter_from_epoch(cls, *args, begin: int = 0, end: int = 0,
                              warmup_iters: int = 0, by_epoch: bool = True,
                              epoch_length: Optional[int] = None, **kwargs):
        """The scheduler with epoch-based ``begin``, ``end`` and
        ``warmup_iters`` stepped per iteration (mmengine's
        ``convert_to_iter_based=True``)."""
        if not by_epoch:
            raise OVSSConfigError(
                'WarmupPolyLR convert_to_iter_based=True needs by_epoch=True '
                '(begin, end and warmup_iters in epochs)')
        if epoch_length is None or epoch_length <= 0:
            raise OVSSConfigError(
                f'WarmupPolyLR: epoch_length={epoch_length!r} must be a '
                'positive number of iterations per epoch')
        return cls(*args, begin=int(begin * epoch_length),
                   end=int(end * epoch_length),
                   warmup_iters=int(warmup_iters * epoch_length),
                   by_epoch=False, **kwargs)

    def _get_value(self):
        return [warmup_poly_lr(base, self.last_step, self.total_iters,
                               self.power, self.eta_min, self.warmup_iters,
                               self.warmup_ratio)
                for base in self.base_values]
