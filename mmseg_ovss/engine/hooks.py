"""Stop training at the first non-finite loss, before a checkpoint saves it.

mmengine's ``CheckpointHook`` deletes the oldest checkpoint
(``max_keep_ckpts``) *before* it writes the new one and points
``last_checkpoint`` at the new one, so a run whose loss turned NaN would
otherwise replace its last good checkpoint with NaN weights, and
``--resume`` would continue from those.
:class:`NonFiniteLossHook` (enabled in ``configs/_base_/default_runtime.py``)
runs after each training iteration ahead of the checkpoint hook and raises
:class:`NonFiniteLossError`, so nothing is saved or deleted and
``last_checkpoint`` keeps pointing at the last good checkpoint.
"""
import math
from typing import Dict, List, Optional

import torch
from mmengine.hooks import CheckpointHook, Hook
from mmseg.registry import HOOKS


class NonFiniteLossError(FloatingPointError):
    """A training loss or the weights about to be saved are NaN or infinite."""


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Raise :class:`NonFiniteLossError` when a loss is NaN or infinite.

    After every training iteration each logged value whose name contains
    ``'loss'`` (mmengine sums exactly those into the total) is checked; the
    values are read from the message hub, where mmengine's
    ``RuntimeInfoHook`` has already copied them to the host, so the check adds
    no device synchronisation. With ``check_weights`` the model's floating
    parameters and buffers are also checked, but only right before a
    ``CheckpointHook`` saves them (periodic, last and best checkpoints): an
    overflowing update can leave non-finite weights behind a finite loss.

    The priority ('HIGH') puts it after ``RuntimeInfoHook`` and before the
    logger and checkpoint hooks. Under a launcher every process checks its
    own loss; a process that raises ends the job (torchrun stops the others).

    Args:
        check_weights (bool): also check the weights before each checkpoint.
            Default True.
    """
    priority = 'HIGH'

    def __init__(self, check_weights: bool = True) -> None:
        self.check_weights = check_weights

    # ----------------------------------------------------------- training
    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[Dict] = None) -> None:
        bad = self._non_finite_losses(runner, outputs or {})
        if bad:
            shown = ', '.join(f'{name}={value}' for name, value in bad)
            raise NonFiniteLossError(
                f'training stopped at iteration {runner.iter + 1}: non-finite '
                f'loss {shown}. {self._checkpoint_note(runner)} Lower the '
                'learning rate, enable gradient clipping (optim_wrapper.'
                'clip_grad=dict(max_norm=...)) or check the data of this '
                'iteration.')
        if self.check_weights and any(
                self._saves_after_iter(hook, runner)
                for hook in self._checkpoint_hooks(runner)):
            self._check_weights(runner, f'iteration {runner.iter + 1}')

    def after_train_epoch(self, runner) -> None:
        if self.check_weights and any(
                self._saves_after_epoch(hook, runner)
                for hook in self._checkpoint_hooks(runner)):
            self._check_weights(runner, f'epoch {runner.epoch + 1}')

    def after_val_epoch(self, runner, metrics=None) -> None:
        if (self.check_weights and runner.train_loop is not None
                and any(hook.save_best
                        for hook in self._checkpoint_hooks(runner))):
            self._check_weights(runner, 'the validation (best checkpoint)')

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _non_finite_losses(runner, outputs: Dict) -> List:
        bad = []
        for name, value in outputs.items():
            if 'loss' not in name:
                continue
            key = f'train/{name}'
            if runner.message_hub.log_scalars.get(key) is not None:
                value = runner.message_hub.get_scalar(key).current()
            value = float(value)
            if not math.isfinite(value):
                bad.append((name, value))
        return bad

    @staticmethod
    def _checkpoint_hooks(runner) -> List[CheckpointHook]:
        return [hook for hook in runner.hooks
                if isinstance(hook, CheckpointHook)]

    @staticmethod
    def _saves_after_iter(hook: CheckpointHook, runner) -> bool:
        if hook.by_epoch:
            return False
        return (hook.every_n_train_iters(runner, hook.interval,
                                         hook.save_begin)
                or (hook.save_last and hook.is_last_train_iter(runner)))

    @staticmethod
    def _saves_after_epoch(hook: CheckpointHook, runner) -> bool:
        if not hook.by_epoch:
            return False
        return (hook.every_n_epochs(runner, hook.interval, hook.save_begin)
                or (hook.save_last and hook.is_last_train_epoch(runner)))

    def _check_weights(self, runner, when: str) -> None:
        model = runner.model
        # what a checkpoint saves: parameters and persistent buffers (a
        # causal attention mask, e.g. the CLIP text tower's, holds -inf by
        # design and is not saved)
        transient = {id(buf) for module in model.modules()
                     for name, buf in module._buffers.items()
                     if buf is not None and
                     name in module._non_persistent_buffers_set}
        tensors = [(name, t) for name, t in
                   list(model.named_parameters()) + list(model.named_buffers())
                   if t.is_floating_point() and id(t) not in transient]
        if not tensors:
            return
        finite = torch.stack([torch.isfinite(t).all() for _, t in tensors])
        if bool(finite.all()):  # one host sync per checkpoint
            return
        names = [name for (name, _), ok in zip(tensors, finite.tolist())
                 if not ok]
        raise NonFiniteLossError(
            f'training stopped at {when}: the weights about to be saved hold '
            f'NaN or infinite values ({", ".join(names[:5])}'
            f'{", ..." if len(names) > 5 else ""}) although the losses were '
            f'finite (e.g. an overflowing update). '
            f'{self._checkpoint_note(runner)} Lower the learning rate or '
            'enable gradient clipping (optim_wrapper.clip_grad).')

    @staticmethod
    def _checkpoint_note(runner) -> str:
        last = runner.message_hub.get_info('last_ckpt')
        if last is None:
            return 'No checkpoint was saved in this run.'
        return (f'Nothing was saved at this step; the last good checkpoint '
                f'{last} is kept (continue from it with tools/train.py '
                'CONFIG --resume).')
