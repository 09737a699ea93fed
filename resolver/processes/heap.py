"""glibc's allocator in a serving process: its mmap threshold held fixed, free pages handed back after a phase."""

from __future__ import annotations

import ctypes
import functools

# From glibc's malloc.h.
M_MMAP_THRESHOLD = -3
# glibc's own starting value. Left to itself glibc raises the threshold to the size of each
# mapped block freed (up to 32 MB): after a dict table of a few MB was dropped (the repeats'
# generations, a list swap), every block up to that size came from the heap, and the heap kept
# the pages they had freed. Setting it also fixes the trim threshold at its default, 128 KB.
MMAP_THRESHOLD_BYTES = 128 * 1024


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The running C library when it is glibc (it has mallopt and malloc_trim); None anywhere else."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None  # musl, macOS, ...: their allocators need neither call
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def tune() -> bool:
    """Hold glibc's mmap threshold at 128 KB, so that a large block is mapped and unmapped on its own.

    Called once, early, by a serving process (a forked worker inherits it). False where the C
    library is not glibc: nothing is done there.
    """
    libc = _glibc()
    return libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1


def trim() -> bool:
    """Give the pages free in glibc's heaps back to the system (malloc_trim); True if any were.

    After a phase that allocates much and keeps little (the start, a snapshot built and installed),
    whose free pages would otherwise count in the process's RSS until they are used again. It
    took 0.05-0.3 ms on a serving process with the 1M-name list.
    """
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1
