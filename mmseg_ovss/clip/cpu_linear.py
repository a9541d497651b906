"""fp32 linear layers of the CPU inference path, on the faster GEMM kernel.

PyTorch's fp32 ``F.linear`` on the CPU calls the BLAS ``sgemm`` it was
built with (MKL in the PyPI wheels). MKL's fast code paths are Intel's: on
an AMD EPYC (2 cores, AVX512, torch 2.9.1 with MKL 2024.2) it ran the
ViT-B/16 block products of 577-token windows at 64-69 GMAC/s, where
oneDNN's fp32 matmul, the kernel behind ``torch.ops.mkldnn.
_linear_pointwise`` that ``torch.compile``'s CPU backend calls for
linear layers, ran the same products at 91-97 GMAC/s. Both compute in
fp32 (no reduced-precision accumulation); they sum the K products in
other orders, so results differ by fp32 rounding (a few units in the last
place of a K-term sum, as any reordering).

The backend is chosen once per process:

- ``'auto'`` (default): oneDNN on an x86 CPU that is not Intel's (AMD,
  where MKL takes its generic path) when oneDNN is built in; else BLAS.
  On Intel CPUs the wheel's default (MKL) is kept: it was not measured
  here against oneDNN;
- ``'onednn'``: oneDNN wherever it is built in;
- ``'blas'``: PyTorch's default everywhere.

Set it with the environment variable ``MMSEG_OVSS_CPU_FP32_LINEAR`` or
:func:`set_cpu_fp32_linear`. Only inference uses it: with autograd,
autocast, a JIT trace (FLOP analysis), another dtype or device,
:func:`linear` is ``F.linear``.

On oneDNN each weight is used in oneDNN's blocked layout, made once
(``torch.ops.mkldnn._reorder_linear_weight``, the packing ``torch.compile``
applies to frozen CPU linear layers) and kept until the weight changes
(:func:`packed_weight`). With the plain (N, K) weight oneDNN re-lays it
out at every call, and on the AMD EPYC above it then ran some shapes far
below its rate: the ViT-B/16 MLP's ``c_proj`` ((1365, 3072) x (3072, 768),
the MLP's row chunks) at 74-78 GMAC/s and FreeCP's 112-pixel crops (300
rows) at 69-87, against 96-110 for both from the packed weight. The packed
copies take as much memory as the weights (about 340 MB for a ViT-B/16
image tower); :func:`release_packed_weights` frees them.
"""
import functools
import os
import weakref
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmseg_ovss.utils.cpuinfo import cpuinfo_value
from mmseg_ovss.utils.errors import OVSSConfigError

CPU_FP32_LINEAR_BACKENDS = ('auto', 'onednn', 'blas')
ENVIRONMENT_VARIABLE = 'MMSEG_OVSS_CPU_FP32_LINEAR'


def _check(backend: str, source: str) -> str:
    if backend not in CPU_FP32_LINEAR_BACKENDS:
        raise OVSSConfigError(
            f'{source}={backend!r} is not one of {CPU_FP32_LINEAR_BACKENDS}: '
            "'auto' (oneDNN on non-Intel x86 CPUs), 'onednn' or 'blas' "
            "(PyTorch's default sgemm)")
    return backend


_SETTING = {'backend': None}


def set_cpu_fp32_linear(backend: Optional[str]) -> None:
    """Choose the fp32 CPU GEMM of :func:`linear` for this process:
    ``'auto'``, ``'onednn'`` or ``'blas'`` (see the module's text); None
    returns to the environment variable's choice (default ``'auto'``)."""
    _SETTING['backend'] = None if backend is None else \
        _check(backend, 'cpu_fp32_linear')
    resolved_backend.cache_clear()


@functools.lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """``vendor_id`` of ``/proc/cpuinfo`` (``'GenuineIntel'``,
    ``'AuthenticAMD'``, ...), or ``''`` where there is none."""
    return cpuinfo_value('vendor_id') or ''


def _onednn_linear_available() -> bool:
    if not (torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled):
        return False
    return hasattr(torch.ops.mkldnn, '_linear_pointwise')


@functools.lru_cache(maxsize=1)
def resolved_backend() -> str:
    """``'onednn'`` or ``'blas'``: the kernel :func:`linear` uses for fp32
    on the CPU in this process."""
    backend = _SETTING['backend']
    if backend is None:
        backend = _check(os.environ.get(ENVIRONMENT_VARIABLE, 'auto'),
                         ENVIRONMENT_VARIABLE)
    if backend == 'blas' or not _onednn_linear_available():
        return 'blas'
    if backend == 'onednn':
        return 'onednn'
    vendor = cpu_vendor()
    return 'onednn' if vendor and vendor != 'GenuineIntel' else 'blas'


def uses_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`linear` of ``x`` and ``weight`` runs on oneDNN:
    fp32 on the CPU for inference (no autograd, autocast or JIT trace)
    with the ``'onednn'`` backend resolved."""
    if x.device.type != 'cpu' or x.dtype != torch.float32 or \
            weight.dtype != torch.float32 or weight.dim() != 2:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    if torch.is_autocast_enabled('cpu') or torch.jit.is_tracing():
        return False
    return resolved_backend() == 'onednn'


# The row count oneDNN is told to expect when it packs a weight; any row
# count runs from the packed layout (on the AMD EPYC above, 256, 1024 and
# 4096 gave the same rates within 4 % from 300 to 3462 rows).
PACKING_ROWS_HINT = 1024

# id(weight) -> (weak reference to the weight, (version, data pointer),
# the packed weight); an entry leaves with its weight.
_PACKED: Dict[int, Tuple[weakref.ref, Tuple[int, int], Tensor]] = {}


def _stamp(weight: Tensor) -> Optional[Tuple[int, int]]:
    """What changes when a weight's values may have changed: its version
    counter (bumped by every in-place write, ``copy_`` and
    ``load_state_dict`` included) and its storage (``.data =``). None for
    an inference-mode tensor, which has no version counter."""
    try:
        return weight._version, weight.data_ptr()
    except RuntimeError:
        return None


def _forget(key: int, ref: weakref.ref) -> None:
    entry = _PACKED.get(key)
    if entry is not None and entry[0] is ref:
        del _PACKED[key]


def packed_weight(weight: Tensor) -> Tensor:
    """``weight`` (N, K) in oneDNN's blocked layout for
    ``_linear_pointwise``: packed on first use and kept while the weight
    lives and is unchanged (same version and storage). Only a module's
    ``nn.Parameter`` is packed: any other tensor (a slice of a weight, a
    parametrization's fresh result, an inference-mode tensor without a
    version counter) is used as it is, contiguous."""
    stamp = _stamp(weight) if isinstance(weight, nn.Parameter) else None
    if stamp is None:
        return weight.contiguous()
    key = id(weight)
    entry = _PACKED.get(key)
    if entry is not None and entry[0]() is weight and entry[1] == stamp:
        return entry[2]
    packed = torch.ops.mkldnn._reorder_linear_weight(
        weight.detach().contiguous(), PACKING_ROWS_HINT)
    ref = weakref.ref(weight, lambda dead, key=key: _forget(key, dead))
    _PACKED[key] = (ref, stamp, packed)
    return packed


def packed_weight_bytes() -> int:
    """Bytes held by the packed weights of this process."""
    return sum(packed.numel() * packed.element_size()
               for _, _, packed in _PACKED.values())


def release_packed_weights() -> None:
    """Drop every packed weight (packed again on next use)."""
    _PACKED.clear()


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None
           ) -> Tensor:
    """``F.linear(x, weight, bias)`` (x @ weight^T + bias), a new tensor,
    on oneDNN's fp32 kernel from the packed weight (:func:`packed_weight`)
    where :func:`uses_onednn` says so."""
    if not uses_onednn(x, weight) or (
            bias is not None and (bias.dtype != torch.float32
                                  or (torch.is_grad_enabled()
                                      and bias.requires_grad))):
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(
        x.contiguous(), packed_weight(weight), bias, 'none', [], '')
