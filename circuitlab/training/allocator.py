"""Keep freed memory in the process: glibc malloc settings for a training loop.

glibc serves every block above its mmap threshold (128 KiB at start, raised as such blocks are freed, at most
32 MiB) with a fresh `mmap`, and gives the top of the heap back to the kernel once more than its trim threshold is
free. A fresh page costs a page fault and the kernel's zeroing of it on first touch. A training step allocates and
frees the same activations, a few MB each, every step, so with the defaults each step touches fresh pages again:
the grokking step made ~2,400 page faults and ran 1.40x slower, its evaluation of all 12,769 pairs ~11,900 and
1.32x slower (`benchmarks/allocator.py`, session 12, 2 threads), and `make demo` made 34.6 million minor page
faults against 4.75 million (`/usr/bin/time -v make demo`). With every block up to 32 MiB from the heap and up to 512 MiB of freed heap
kept, the same memory is reused step after step.

Results do not change: torch aligns every CPU buffer to 64 bytes whichever way the memory comes, so the kernels
take the same paths (tested: the same weights, to the bit, with and without). The cost is memory: a process keeps
up to `TRIM` bytes it has freed. CIRCUITLAB_MALLOC=system keeps glibc's own settings, and a MALLOC_*_ variable of
glibc's own set by the user wins. Elsewhere than glibc (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import os

ENV = "CIRCUITLAB_MALLOC"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP = 32 * 2**20  # the largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM = 512 * 2**20
_GLIBC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_applied: bool | None = None


def glibc() -> bool:
    """Whether this process runs on glibc (the C library it has loaded, not the one the interpreter was built on)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once; later calls return the first answer).
    Returns whether the settings are in force."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "").strip().lower() == "system" or any(v in os.environ for v in _GLIBC_VARS):
        return False
    if not glibc():
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM))
    return _applied
