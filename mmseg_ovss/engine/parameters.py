"""Learnable / frozen parameter counts, logged when training starts.

:func:`count_parameters` counts a model's parameters (each shared tensor
once) in total and per top-level module (``backbone``, ``text_encoder``,
``decode_head``, ...). :class:`LearnableParametersHook` (a default hook of
``configs/_base_/default_runtime.py``) logs them before the first
iteration and checks two ways of paying for a frozen weight:

- a parameter with ``requires_grad=True`` that no optimiser parameter group
  holds: autograd computes and keeps its gradient, nothing ever updates it;
- after the first iteration, any parameter outside the optimiser that holds
  a ``.grad`` buffer (the optimiser's ``zero_grad`` frees its own
  parameters' gradients after each update; the others' stay allocated).
"""
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Set

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn

from mmseg.registry import HOOKS
from mmseg_ovss.utils.errors import OVSSConfigError

#: The name of a model's parameters that belong to no child module.
OWN = '(own)'


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


def _stats(params: Iterable[nn.Parameter]) -> Dict[str, int]:
    total = learnable = 0
    for p in params:
        total += p.numel()
        if p.requires_grad:
            learnable += p.numel()
    return dict(total=total, learnable=learnable, frozen=total - learnable)


def count_parameters(model: nn.Module) -> Dict:
    """Parameter counts of ``model`` (a DDP wrapper is looked through).

    Returns:
        dict: ``total``, ``learnable`` (``requires_grad``), ``frozen``
        (numbers of scalars; a parameter shared by two modules is counted
        once) and ``per_module``: the same three counts for each top-level
        child in registration order, and under ``'(own)'`` for parameters
        registered on the model itself.
    """
    model = _unwrap(model)
    per_module = OrderedDict()
    seen: Set[int] = set()
    for name, child in model.named_children():
        params = list(child.parameters())
        if params:
            per_module[name] = _stats(params)
        seen.update(id(p) for p in params)
    own = [p for p in model.parameters(recurse=False) if id(p) not in seen]
    if own:
        per_module[OWN] = _stats(own)
    counts = _stats(model.parameters())
    counts['per_module'] = per_module
    return counts


def format_parameter_counts(counts: Dict) -> str:
    """A table of :func:`count_parameters`'s counts in millions."""
    rows = [('module', 'learnable (M)', 'frozen (M)', 'total (M)')]
    for name, stats in counts['per_module'].items():
        rows.append((name, *(f'{stats[k] / 1e6:.4f}'
                             for k in ('learnable', 'frozen', 'total'))))
    rows.append(('all', *(f'{counts[k] / 1e6:.4f}'
                          for k in ('learnable', 'frozen', 'total'))))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ['  '.join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, '-' * len(lines[0]))
    return '\n'.join(lines)


def optimized_parameter_ids(optim_wrapper) -> Set[int]:
    """ids of the parameters in any parameter group of the optimiser(s)
    (an ``OptimWrapper`` or an ``OptimWrapperDict``)."""
    wrappers = (optim_wrapper.values() if hasattr(optim_wrapper, 'values')
                and not hasattr(optim_wrapper, 'optimizer') else
                [optim_wrapper])
    ids = set()
    for wrapper in wrappers:
        for group in wrapper.optimizer.param_groups:
            ids.update(id(p) for p in group['params'])
    return ids


def _names(pairs: List, limit: int = 8) -> str:
    shown = ', '.join(name for name, _ in pairs[:limit])
    return shown + (f', ... ({len(pairs)} in all)' if len(pairs) > limit
                    else '')


@HOOKS.register_module()
class LearnableParametersHook(Hook):
    """Log learnable / frozen / total parameters before training.

    Before the first iteration it logs a table (millions of parameters per
    top-level module and in all), stores the counts in the message hub
    (info ``parameter_counts``) and warns about learnable parameters that
    no optimiser group holds. After the first iteration of the run it checks
    that no parameter outside the optimiser holds a gradient buffer (frozen
    weights must cost no gradient memory) and stores the count in the
    message hub (info ``frozen_params_with_grad``).

    Args:
        strict (bool): raise ``OVSSConfigError`` instead of warning.
            Default False.
    """
    priority = 'VERY_LOW'

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._checked_grads = False

    def _complain(self, runner, message: str) -> None:
        if self.strict:
            raise OVSSConfigError(message)
        runner.logger.warning(message)

    def before_train(self, runner) -> None:
        model = _unwrap(runner.model)
        counts = count_parameters(model)
        runner.message_hub.update_info('parameter_counts', counts)
        runner.logger.info(
            f'parameters of {type(model).__name__}: learnable '
            f'{counts["learnable"] / 1e6:.4f} M, frozen '
            f'{counts["frozen"] / 1e6:.4f} M, total '
            f'{counts["total"] / 1e6:.4f} M\n'
            + format_parameter_counts(counts))
        if runner.optim_wrapper is None:
            return
        optimized = optimized_parameter_ids(runner.optim_wrapper)
        orphans = [(name, p) for name, p in model.named_parameters()
                   if p.requires_grad and id(p) not in optimized]
        if orphans:
            count = sum(p.numel() for _, p in orphans)
            self._complain(runner, (
                f'{len(orphans)} parameter(s) ({count / 1e6:.4f} M) require '
                f'gradients but are in no optimiser group, so they get '
                f'gradient buffers and are never updated: {_names(orphans)}.'
                ' Freeze them (requires_grad=False, e.g. the backbone\'s '
                'freeze policy) or check optim_wrapper.paramwise_cfg.'))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        if self._checked_grads:
            return
        self._checked_grads = True
        model = _unwrap(runner.model)
        optimized = optimized_parameter_ids(runner.optim_wrapper)
        holding = [(name, p) for name, p in model.named_parameters()
                   if p.grad is not None and id(p) not in optimized]
        runner.message_hub.update_info('frozen_params_with_grad',
                                       len(holding))
        if not holding:
            runner.logger.info('after the first iteration no frozen '
                               'parameter holds a gradient buffer')
            return
        size = sum(p.grad.numel() * p.grad.element_size()
                   for _, p in holding)
        self._complain(runner, (
            f'after the first iteration {len(holding)} parameter(s) outside '
            f'the optimiser hold gradient buffers ({size / 2**20:.2f} MiB): '
            f'{_names(holding)}. Set requires_grad=False on weights that do '
            'not train.'))


def frozen_params_with_grad(model: nn.Module,
                            trainable: Optional[Set[int]] = None) -> int:
    """How many parameters outside ``trainable`` (ids; default: those that
    require gradients) hold a ``.grad``."""
    model = _unwrap(model)
    return sum(1 for p in model.parameters() if p.grad is not None and (
        not p.requires_grad if trainable is None else id(p) not in trainable))


__all__ = ['count_parameters', 'format_parameter_counts',
           'LearnableParametersHook', 'optimized_parameter_ids',
           'frozen_params_with_grad']
