"""Compute precision of the dense CLIP path and the kernels behind it.

``CLIPDenseSegmentor(precision=...)`` names the dtype the image tower, the
dense strategy and the captured attention run in: ``'fp32'`` (exact, the
default), ``'bf16'``, ``'fp16'`` (CUDA only) or ``'auto'``. A low precision
runs on a cast copy of the tower's weights
(:meth:`~mmseg_ovss.models.backbones.OpenCLIPViT.cast_copy`), not under
``torch.autocast``: on the CPU, autocast re-casts the weights at every
matmul (a ViT-B/16 forward ran about 3x slower than fp32 that way on an
AMD EPYC), while a copy casts them once. The outputs of the tower are cast
back to fp32, so the heads and the text embeddings stay fp32.

Whether a low precision is faster depends on the matmul kernels:

- CPUs with Intel AMX tiles (``amx_bf16``): bf16 matmuls run on tiles,
  several times the fp32 rate;
- CPUs with AVX512-BF16 but no AMX: oneDNN's ``avx512_core_bf16`` kernels.
  On AMD EPYC the bf16 matmul runs at 2.5-3x the fp32 (MKL) rate and the
  bf16 ViT-B/16 forward is about 1.9x faster than fp32; on an Intel Xeon of
  the same flags (no AMX) the bf16 matmul ran at 0.6x the fp32 rate, so
  bf16 there is slower;
- CUDA GPUs: fp16 / bf16 tensor cores.

:func:`kernel_report` says what this machine has; :func:`matmul_rates`
measures the matmul rate per dtype at a transformer shape, which ``'auto'``
uses on CPUs without AMX.
"""
import functools
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Union

import torch

from mmseg_ovss.clip.cpu_linear import resolved_backend
from mmseg_ovss.utils.cpuinfo import cpuinfo_value
from mmseg_ovss.utils.errors import OVSSConfigError

PRECISIONS = ('fp32', 'bf16', 'fp16', 'auto')
PRECISION_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16,
                    'fp16': torch.float16}
#: 'auto' picks bf16 on a CPU without AMX when its measured bf16 matmul
#: rate is at least this many times the fp32 one.
AUTO_BF16_MIN_SPEEDUP = 1.25


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is
    none, e.g. macOS or Windows)."""
    return frozenset((cpuinfo_value('flags', 'Features') or '').split())


def cpu_has_amx() -> bool:
    """Whether this CPU multiplies bf16 matrices in AMX tiles (as PyTorch
    sees it: ``torch._C._cpu._is_amx_tile_supported``)."""
    cpu = getattr(torch._C, '_cpu', None)
    return bool(getattr(cpu, '_is_amx_tile_supported', lambda: False)())


def _mkldnn_bf16() -> bool:
    check = getattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


@dataclass(frozen=True)
class KernelReport:
    """The matmul kernels available for each dtype on one device.

    Attributes:
        device: ``'cpu'`` or the CUDA device's name.
        cpu_capability: PyTorch's CPU kernel level (``'AVX512'``, ...).
        mkldnn: oneDNN is built in and enabled.
        mkldnn_bf16: oneDNN has bf16 kernels for this CPU.
        avx512_bf16, avx512_fp16, amx_bf16: CPU flags (``/proc/cpuinfo``).
        amx_tiles: PyTorch can use AMX tiles.
        cuda_bf16: the CUDA device supports bf16.
        flash_sdp: PyTorch's flash kernel of ``scaled_dot_product_attention``
            is enabled (CUDA).
        fp32_linear: the fp32 GEMM of the CPU inference path, ``'onednn'``
            or ``'blas'`` (:mod:`mmseg_ovss.clip.cpu_linear`).
    """
    device: str
    cpu_capability: str
    mkldnn: bool
    mkldnn_bf16: bool
    avx512_bf16: bool
    avx512_fp16: bool
    amx_bf16: bool
    amx_tiles: bool
    cuda_bf16: bool = False
    flash_sdp: bool = False
    fp32_linear: str = 'blas'

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for the log."""
        if self.device != 'cpu':
            return (f'{self.device}: bf16 {"yes" if self.cuda_bf16 else "no"}'
                    f', fp16 yes, flash SDPA '
                    f'{"on" if self.flash_sdp else "off"}')
        bf16 = ('AMX tiles' if self.amx_tiles else
                'oneDNN avx512_core_bf16 (no AMX)' if self.mkldnn_bf16
                else 'none (emulated)')
        fp32 = 'oneDNN' if self.fp32_linear == 'onednn' else 'BLAS'
        return (f'cpu {self.cpu_capability}, oneDNN '
                f'{"on" if self.mkldnn else "off"}; fp32 linear: {fp32}; '
                f'bf16 matmul: {bf16}; '
                f'avx512_fp16 {"yes" if self.avx512_fp16 else "no"}')


def kernel_report(device: Union[str, torch.device] = 'cpu') -> KernelReport:
    """What matmul kernels ``device`` offers for fp32, bf16 and fp16."""
    device = torch.device(device)
    flags = cpu_flags()
    cpu = dict(
        cpu_capability=str(torch.backends.cpu.get_cpu_capability()),
        mkldnn=bool(torch.backends.mkldnn.is_available()
                    and torch.backends.mkldnn.enabled),
        mkldnn_bf16=_mkldnn_bf16(),
        avx512_bf16='avx512_bf16' in flags,
        avx512_fp16='avx512_fp16' in flags,
        amx_bf16='amx_bf16' in flags,
        amx_tiles=cpu_has_amx(),
        fp32_linear=resolved_backend())
    if device.type == 'cuda':
        return KernelReport(
            device=torch.cuda.get_device_name(device), **cpu,
            cuda_bf16=bool(torch.cuda.is_bf16_supported()),
            flash_sdp=bool(torch.backends.cuda.flash_sdp_enabled()))
    return KernelReport(device=device.type, **cpu)


def matmul_rates(dtypes: Sequence[torch.dtype] = (torch.float32,
                                                   torch.bfloat16),
                 device: Union[str, torch.device] = 'cpu',
                 shape=(512, 768, 3072), repeats: int = 3
                 ) -> Dict[torch.dtype, float]:
    """Measured GFLOP/s of a linear layer (on the dense path's kernel) at
    a ViT-B MLP shape (tokens, in, out) per dtype, by
    :func:`mmseg_ovss.engine.complexity.measure_matmul_rate` (its
    convention: one multiply-add = 1 FLOP)."""
    from mmseg_ovss.engine.complexity import measure_matmul_rate
    return {
        dtype: measure_matmul_rate(dtype, shape, repeats,
                                   device=device)['gflop_per_s']
        for dtype in dtypes
    }


@functools.lru_cache(maxsize=None)
def _cpu_bf16_wins() -> bool:
    rates = matmul_rates((torch.float32, torch.bfloat16), 'cpu')
    return rates[torch.bfloat16] >= AUTO_BF16_MIN_SPEEDUP * \
        rates[torch.float32]


def check_precision(precision: str) -> str:
    """``precision`` if it is a known name, else a clear error."""
    if precision not in PRECISIONS:
        raise OVSSConfigError(
            f'precision={precision!r} is not one of {PRECISIONS}: fp32 '
            "(exact, default), 'bf16', 'fp16' (CUDA) or 'auto' (the fastest "
            'this device supports)')
    return precision


def compute_dtype(precision: str,
                  device: Union[str, torch.device]) -> torch.dtype:
    """The dtype the dense path runs in for ``precision`` on ``device``.

    ``'auto'``: fp16 on CUDA; on the CPU bf16 with AMX tiles, or when the
    measured bf16 matmul rate is at least :data:`AUTO_BF16_MIN_SPEEDUP` x
    the fp32 one (measured once per process), else fp32. Raises for fp16 on
    the CPU and for bf16 where the device has no bf16 kernels.
    """
    check_precision(precision)
    device = torch.device(device)
    if precision == 'fp32':
        return torch.float32
    if device.type == 'cuda':
        if precision == 'bf16' and not torch.cuda.is_bf16_supported():
            raise OVSSConfigError(
                f'precision=bf16 on {torch.cuda.get_device_name(device)}, '
                'which has no bf16 support; use precision=fp16 or auto')
        return torch.float16 if precision == 'auto' else \
            PRECISION_DTYPES[precision]
    if device.type != 'cpu':
        if precision == 'auto':
            return torch.float32
        return PRECISION_DTYPES[precision]
    if precision == 'fp16':
        raise OVSSConfigError(
            'precision=fp16 on the CPU: PyTorch has no fast fp16 kernels '
            "for the whole CLIP path there; use precision='bf16' (CPUs "
            "with AVX512-BF16 or AMX) or 'fp32'")
    native = cpu_has_amx() or _mkldnn_bf16()
    if precision == 'bf16':
        if not native:
            raise OVSSConfigError(
                'precision=bf16 on a CPU without bf16 matmul kernels '
                f'(oneDNN bf16: no, AMX: no; {kernel_report("cpu").summary()}'
                "): bf16 would be emulated and slow; use precision='fp32'")
        return torch.bfloat16
    if cpu_has_amx() or (native and _cpu_bf16_wins()):
        return torch.bfloat16
    return torch.float32


def dtype_name(dtype: Optional[torch.dtype]) -> str:
    """'fp32', 'bf16' or 'fp16' for a dtype (its repr otherwise)."""
    for name, value in PRECISION_DTYPES.items():
        if value == dtype:
            return name
    return str(dtype)
