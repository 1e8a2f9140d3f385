"""Give freed memory back to the operating system between ops of a streaming pass.

glibc keeps freed buffers below its mmap threshold (which grows up to 32 MB as large
buffers come and go) in the process's heaps. When a model's weights fill most of the
machine, the per-op buffers of a streaming mask pass add up there; ``malloc_trim(0)``
returns them. Elsewhere (macOS, Windows, musl) this does nothing. After a small op it does
nothing either: a trim costs about 1.3 ms (measured), 50 ms of a 42-op SparseGPT run on a
small LLaMA, and what small ops free is reused by the next.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


# Ops of fewer weights than this (4M: 16 MiB in float32) free too little to trim after.
_TRIM_FROM = 1 << 22


def release_freed_memory(elements: int | None = None) -> None:
    """Return the heap's free pages to the system, if the C library can; ``elements``: the
    size of the op whose buffers were just freed (below ``_TRIM_FROM`` nothing is done)."""
    if elements is not None and elements < _TRIM_FROM:
        return
    trim = _trim()
    if trim is not None:
        trim(0)
