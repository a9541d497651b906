"""Fault injection for resume and training-safety tests."""
import torch
from mmengine.hooks import Hook
from mmseg.registry import HOOKS


@HOOKS.register_module()
class CrashAfterIterHook(Hook):
    """Raise after training iteration ``after_iter`` (1-based) has finished.

    Runs with the lowest priority, i.e. after the checkpoint hook, like a
    process killed between two iterations.
    """
    priority = 'LOWEST'

    def __init__(self, after_iter: int):
        self.after_iter = after_iter

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter + 1 == self.after_iter:
            raise RuntimeError(
                f'simulated crash after iteration {self.after_iter}')


def _poison(runner, value: float) -> None:
    """Write ``value`` into the first floating parameter of the model."""
    param = next(p for p in runner.model.parameters()
                 if p.is_floating_point())
    with torch.no_grad():
        param.view(-1)[0] = value


@HOOKS.register_module()
class NaNWeightsBeforeIterHook(Hook):
    """Set one weight to ``value`` (NaN) before iteration ``at_iter``
    (1-based), so that iteration's loss is non-finite, as after a diverged
    update."""

    def __init__(self, at_iter: int, value: float = float('nan')):
        self.at_iter = at_iter
        self.value = value

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.at_iter:
            _poison(runner, self.value)


@HOOKS.register_module()
class NaNWeightsAfterIterHook(Hook):
    """Set one weight to ``value`` right after iteration ``at_iter``'s update
    (1-based; before the logger and checkpoint hooks): finite loss,
    non-finite weights, as after an overflowing update."""
    priority = 20  # after RuntimeInfoHook (10), before NonFiniteLossHook

    def __init__(self, at_iter: int, value: float = float('inf')):
        self.at_iter = at_iter
        self.value = value

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter + 1 == self.at_iter:
            _poison(runner, self.value)
