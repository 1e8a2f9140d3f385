"""Freed memory goes back to the system between the ops of a streaming pass (glibc)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from prunekit.masks.select.memory import release_freed_memory


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
@pytest.mark.parametrize("elements", [None, 1 << 22])
def test_freed_buffers_below_the_mmap_threshold_are_returned(elements: int | None) -> None:
    """Buffers of 64 KiB live in the heap; freeing every other one leaves holes glibc keeps
    (the resident size does not drop), and only ``malloc_trim`` gives their pages back."""
    kept, dropped = [], []
    for i in range(400):
        (kept if i % 2 else dropped).append(torch.ones(16 * 1024))  # 64 KiB of float32
    freed = sum(t.numel() * t.element_size() for t in dropped)
    del dropped
    before = resident_bytes()
    release_freed_memory(elements)
    assert before - resident_bytes() > freed // 2
    assert len(kept) == 200


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_after_a_small_op_nothing_is_trimmed() -> None:
    kept, dropped = [], []
    for i in range(400):
        (kept if i % 2 else dropped).append(torch.ones(16 * 1024))
    freed = sum(t.numel() * t.element_size() for t in dropped)
    del dropped
    before = resident_bytes()
    release_freed_memory((1 << 22) - 1)  # an op of under 4M weights
    assert before - resident_bytes() < freed // 4
    release_freed_memory()
    assert len(kept) == 200
