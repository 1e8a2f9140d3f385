"""Give freed memory back to the operating system between ops of a streaming pass.

glibc keeps freed buffers below its mmap threshold (which grows up to 32 MB as large
buffers come and go) in the process's heaps. When a model's weights fill most of the
machine, the per-op buffers of a streaming mask pass add up there; ``malloc_trim(0)``
returns them. Elsewhere (macOS, Windows, musl) this does nothing.
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


def release_freed_memory() -> None:
    """Return the heap's free pages to the system, if the C library can."""
    trim = _trim()
    if trim is not None:
        trim(0)
