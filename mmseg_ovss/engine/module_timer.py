"""Wall-clock time spent in each top-level module of a model's forward.

Used by ``tools/benchmark.py --train`` for its per-module breakdown. The
time of a top-level child (``backbone``, ``text_encoder``, ``decode_head``,
``data_preprocessor``) is the time inside forward calls of it or any of its
submodules, from the call's start until it returns (nested calls are not
counted twice); direct ``child.forward(...)`` calls of a segmentor are
routed through the module's hooks. A method other than ``forward`` (the
text encoder's ``embed_vocabulary``) is charged only for the submodule
forward calls it makes: its own work between them (tokenising, prompt
building, normalising) is not, and stays in the forward's remainder. CUDA
is synchronised at each start and stop of a top-level call.
"""
import time
from collections import defaultdict
from contextlib import ExitStack
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from mmseg_ovss.engine.complexity import through_call


class ModuleTimer:
    """Accumulate seconds per top-level child while active (``with``).

    Args:
        model (nn.Module): the model (a DDP wrapper is looked through).
        names (Sequence[str], optional): the children to time (default all).
        cuda_sync (bool): synchronise CUDA at starts and stops.
    """

    def __init__(self, model: nn.Module, names: Optional[Sequence[str]] = None,
                 cuda_sync: bool = True):
        model = getattr(model, 'module', model)
        children = dict(model.named_children())
        self.children = {n: children[n] for n in (names or children)}
        self.cuda_sync = cuda_sync and torch.cuda.is_available()
        self.seconds: Dict[str, float] = defaultdict(float)
        self.calls: Dict[str, int] = defaultdict(int)
        self._depth: Dict[str, int] = defaultdict(int)
        self._start: Dict[str, float] = {}
        self._stack: Optional[ExitStack] = None

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def _now(self) -> float:
        if self.cuda_sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _enter(self, name: str):
        def hook(module, args):
            if self._depth[name] == 0:
                self._start[name] = self._now()
            self._depth[name] += 1
        return hook

    def _leave(self, name: str):
        def hook(module, args, output):
            self._depth[name] -= 1
            if self._depth[name] == 0:
                self.seconds[name] += self._now() - self._start.pop(name)
                self.calls[name] += 1
        return hook

    def __enter__(self) -> 'ModuleTimer':
        stack = ExitStack()
        stack.enter_context(through_call(self.children))
        for name, child in self.children.items():
            for module in child.modules():
                stack.callback(module.register_forward_pre_hook(
                    self._enter(name)).remove)
                stack.callback(module.register_forward_hook(
                    self._leave(name), always_call=True).remove)
        self._stack = stack
        return self

    def __exit__(self, *exc) -> bool:
        self._stack.close()
        self._stack = None
        self._depth.clear()
        self._start.clear()
        return False
