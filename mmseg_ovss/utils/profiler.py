"""Per-stage wall-clock timing for ``tools/benchmark.py``.

Modules wrap their stages in ``with profile_stage('backbone'):``; this is a
no-op unless a :class:`StageProfiler` is active (``with profiler:``), so it
costs nothing in normal runs. Stage names used by the package: ``text``,
``backbone``, ``head``, ``postprocess`` (any other name is recorded too).
``current`` names the outermost stage running, which
``mmseg_ovss.engine.complexity.StageFlopCounter`` reads to charge FLOPs to
the same stages the profiler times.

Inside a stage, ``with profile_detail('crop_encoder', items=n):`` times a
part of it (and counts its items, e.g. the crops encoded) without taking
that time from the stage: details are a breakdown, the stages add up to the
latency. ``count_detail(name, n)`` counts without timing.
"""
import contextlib
import time
from collections import defaultdict
from contextvars import ContextVar
from typing import Dict, Optional

import torch

_ACTIVE: ContextVar[Optional['StageProfiler']] = ContextVar(
    'mmseg_ovss_stage_profiler', default=None)


class StageProfiler:
    """Accumulates seconds and call counts per stage name.

    Args:
        cuda_sync (bool): synchronise CUDA before reading the clock, so GPU
            stages are timed correctly (only when CUDA is available).
    """

    def __init__(self, cuda_sync: bool = True):
        self.cuda_sync = cuda_sync and torch.cuda.is_available()
        self.seconds: Dict[str, float] = defaultdict(float)
        self.calls: Dict[str, int] = defaultdict(int)
        #: seconds, calls and items of the details (parts of stages)
        self.detail_seconds: Dict[str, float] = defaultdict(float)
        self.detail_calls: Dict[str, int] = defaultdict(int)
        self.detail_items: Dict[str, int] = defaultdict(int)
        self._token = None
        self._depth = 0
        #: the outermost stage running now (None outside every stage)
        self.current: Optional[str] = None

    def reset(self):
        for table in (self.seconds, self.calls, self.detail_seconds,
                      self.detail_calls, self.detail_items):
            table.clear()

    def __enter__(self):
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc):
        _ACTIVE.reset(self._token)
        self._token = None
        return False

    def _now(self) -> float:
        if self.cuda_sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str):
        # Nested stages are charged to the outermost one only.
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._depth = 1
        self.current = name
        start = self._now()
        try:
            yield
        finally:
            self.seconds[name] += self._now() - start
            self.calls[name] += 1
            self._depth = 0
            self.current = None

    @contextlib.contextmanager
    def detail(self, name: str, items: int = 0):
        start = self._now()
        try:
            yield
        finally:
            self.detail_seconds[name] += self._now() - start
            self.detail_calls[name] += 1
            self.detail_items[name] += int(items)

    def count(self, name: str, items: int) -> None:
        self.detail_items[name] += int(items)


@contextlib.contextmanager
def profile_stage(name: str):
    """Time the enclosed block as stage ``name`` if a profiler is active."""
    profiler = _ACTIVE.get()
    if profiler is None:
        yield
        return
    with profiler.stage(name):
        yield


@contextlib.contextmanager
def profile_detail(name: str, items: int = 0):
    """Time the enclosed block as detail ``name`` (part of a stage, not
    taken from it) and add ``items`` to its count, if a profiler is
    active."""
    profiler = _ACTIVE.get()
    if profiler is None:
        yield
        return
    with profiler.detail(name, items):
        yield


def count_detail(name: str, items: int) -> None:
    """Add ``items`` to detail ``name``'s count if a profiler is active."""
    profiler = _ACTIVE.get()
    if profiler is not None:
        profiler.count(name, items)
