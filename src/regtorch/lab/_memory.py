"""Process-level memory tuning for the lab's command and the benchmarks (private).

Not part of the library: a library must not change how its host process allocates memory; the
``regtorch`` command and the benchmarks own their process and may.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks in the process; return whether it agreed.

    By default glibc unmaps (or trims) freed blocks of a few MB, and the next step page-faults them
    back: every epoch's evaluation of 15 stacked digit models allocates and frees ~14 MB blocks.
    On a VM where the first touch of a page is slow, that is a quarter of ``regtorch demo``'s time
    (measured: 15.1 s → 11.0 s for the digits study). PyTorch's GPU caching allocator keeps memory
    the same way. Not glibc: no-op.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum on 64-bit
                and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
