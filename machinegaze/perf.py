"""Process-level speed settings, applied by entry points (CLI, benchmarks), never at import time."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Keep freed activation buffers in the process (glibc): large tensors are otherwise mmap'd, returned to
    the OS on free and page-faulted back in on the next forward pass, which can halve CPU inference speed.
    Returns True when the settings were applied (glibc Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = _libc()
        # M_MMAP_THRESHOLD cannot exceed 32 MB on 64-bit glibc, so large blocks would still be mmap'd:
        # turn mmap off for malloc (heap only) and raise the trim threshold so the heap is kept.
        ok1 = libc.mallopt(_M_MMAP_MAX, ctypes.c_int(0))
        ok2 = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(threshold_bytes, 2**31 - 1)))
        return bool(ok1 and ok2)
    except (OSError, AttributeError):
        return False


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def release_free_memory() -> bool:
    """Ask glibc to hand freed heap pages back to the OS (malloc_trim(0)): loading a network leaves large freed
    buffers behind. A no-op returning False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = _libc().malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))
