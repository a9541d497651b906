"""Scratch buffers of the CPU inference path, kept from call to call.

A ViT-B/16 block over FreeCP's 6 windows of 577 tokens makes a (3462, 2304)
q/k/v projection (32 MiB in fp32) and (1365, 3072) MLP hidden and gate
buffers (16 MiB each). glibc hands such sizes out fresh from the system
(``mmap``, or heap memory it has just trimmed) often enough that an image
page-faulted 20-90 thousand 4 KiB pages in them (AMD EPYC VM, 2 cores),
with each fault costing more the busier the machine. A buffer that stays
allocated is faulted in once.

The buffers are per thread (``threading.local``) and keyed by a name, a
dtype and a device; a request larger than the kept buffer replaces it.
They hold scratch whose lifetime ends inside one function (no caller sees
them), used only without autograd on the CPU. :func:`release_workspace`
frees them (e.g. after a run, or before a large allocation elsewhere).
"""
import math
import threading
from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor


class _Buffers(threading.local):

    def __init__(self):
        self.tensors: Dict[Tuple[str, torch.dtype, torch.device],
                           Tensor] = {}


_BUFFERS = _Buffers()


def workspace(name: str, shape: Sequence[int], dtype: torch.dtype,
              device: torch.device) -> Tensor:
    """An uninitialised tensor of ``shape`` in the buffer ``name`` of this
    thread; the previous tensor handed out under ``name`` (same dtype and
    device) must no longer be in use."""
    numel = math.prod(shape)
    key = (name, dtype, torch.device(device))
    buffer = _BUFFERS.tensors.get(key)
    if buffer is None or buffer.numel() < numel:
        _BUFFERS.tensors.pop(key, None)  # free the old one first
        buffer = torch.empty(numel, dtype=dtype, device=device)
        _BUFFERS.tensors[key] = buffer
    return buffer[:numel].view(*shape)


def workspace_bytes() -> int:
    """Bytes held by this thread's buffers."""
    return sum(t.numel() * t.element_size()
               for t in _BUFFERS.tensors.values())


def release_workspace() -> None:
    """Free this thread's buffers."""
    _BUFFERS.tensors.clear()
