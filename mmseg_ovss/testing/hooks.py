"""Fault injection for resume tests."""
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
