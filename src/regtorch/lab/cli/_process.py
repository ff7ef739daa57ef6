"""What the lab's command and the benchmarks tune in the process they own (private): how freed
memory is kept, and how many CPUs there are.

Not part of the library: a library must not change how its host process allocates memory; the
``regtorch`` command and the benchmarks own their process and may. Standard library only: the
command reads the CPU count for its ``--help`` before anything heavy is imported.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["available_cpus", "keep_freed_memory"]

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


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
