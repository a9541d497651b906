"""glibc's allocator settings for the CPU inference path.

A ViT-B/16 forward over FreeCP's 6 windows of 577 tokens allocates and
frees tensors of 4-32 MiB at every block: the q/k/v projection (32 MiB in
fp32), the MLP's hidden chunks (16 MiB), the attention tiles (8 MiB). By
default glibc serves a large request with a fresh ``mmap`` (its threshold
adapts, but the sizes here keep moving it), or from heap memory it has
just returned to the system (``trim``), so the kernel zeroes and faults in
those pages again. On an AMD EPYC VM (2 cores, AVX2) FreeCP-SCLIP at ADE
size page-faulted 50-150 thousand 4 KiB pages per image (0.2-0.6 GiB).
Keeping freed memory in the heap (:func:`keep_freed_memory`) brought that
down to under 100 pages from the fifth image on, and those images from a
median of 5.70 to 5.07 s (``docs/clip_backbone.md``).

:func:`keep_freed_memory` sets, for the whole process, glibc's
``M_MMAP_THRESHOLD`` to its largest value (32 MiB on 64-bit: requests
below it come from the heap) and ``M_TRIM_THRESHOLD`` to 2 GiB (free heap
memory is kept for the next request instead of being returned). The
process's peak memory is unchanged; what it held at its peak stays
mapped. ``CLIPDenseSegmentor`` calls it before its first inference on the
CPU. The environment variable ``MMSEG_OVSS_CPU_MALLOC`` chooses:
``'keep'`` (default) or ``'system'`` (glibc's own settings, untouched).
Without glibc (macOS, Windows, musl) nothing is changed.
"""
import ctypes
import ctypes.util
import functools
import os

from mmseg_ovss.utils.errors import OVSSConfigError

ENVIRONMENT_VARIABLE = 'MMSEG_OVSS_CPU_MALLOC'
CHOICES = ('keep', 'system')
# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: free heap memory above this is returned to the system
TRIM_THRESHOLD_BYTES = 2 ** 31 - 1


def cpu_malloc_choice() -> str:
    """``MMSEG_OVSS_CPU_MALLOC`` (default ``'keep'``), checked."""
    choice = os.environ.get(ENVIRONMENT_VARIABLE, 'keep')
    if choice not in CHOICES:
        raise OVSSConfigError(
            f'{ENVIRONMENT_VARIABLE}={choice!r} is not one of {CHOICES}: '
            "'keep' (freed memory stays in the heap; default) or 'system' "
            "(glibc's own allocator settings)")
    return choice


def _glibc_mallopt():
    """glibc's ``mallopt``, or None where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    except OSError:
        return None
    if not hasattr(libc, 'gnu_get_libc_version') or \
            not hasattr(libc, 'mallopt'):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc.mallopt


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> str:
    """Keep freed memory in glibc's heap for this process (once); returns
    what was done, for the log: ``'kept'``, ``'system'`` (the environment
    chose glibc's settings, or glibc refused the values) or
    ``'no glibc'``."""
    if cpu_malloc_choice() == 'system':
        return 'system'
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return 'no glibc'
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
            and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        return 'system'  # glibc refused the values: its own settings stay
    return 'kept'
