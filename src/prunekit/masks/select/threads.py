"""Threads for the selection engine: comparison chunks, and whole ops two at a time.

Two pools, each its own kind of work, so that an op's work never waits for a chunk queued
behind it. Pools are made again in a forked child, where the parent's threads do not exist.
Only prunekit's own code runs on these threads (never a pattern's hooks or a user's scores
mapping).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Literal, TypeVar

import torch

PoolKind = Literal["chunks", "ops"]
_pools: dict[PoolKind, tuple[int, ThreadPoolExecutor]] = {}

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")
_op_lock = threading.Lock()


def workers(kind: PoolKind = "chunks") -> ThreadPoolExecutor:
    """The pool for comparison chunks (``"chunks"``) or whole ops (``"ops"``) of this
    process (one thread per core, at least two)."""
    made = _pools.get(kind)
    if made is None or made[0] != os.getpid():
        made = _pools[kind] = (os.getpid(), ThreadPoolExecutor(max(2, os.cpu_count() or 2)))
    return made[1]


@functools.cache
def thread_count_settable() -> bool:
    """Whether torch's intra-op thread count can change at any time: with the OpenMP
    backend (Linux and Windows wheels) it can; the native backend refuses once parallel
    work has started, and two items would then run on full thread teams at once."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def map_ops(
    work: Callable[[_Item], _Result], items: Sequence[_Item], *, parallel: bool = True
) -> list[_Result]:
    """``[work(item) for item in items]``, the items spread over torch's thread count, each
    running single-threaded torch and numpy.

    Why: per op, a mask is a chain of steps, several of them serial (numpy's sorts and
    selections, ``nonzero``, Python between kernels); running two ops at once keeps both
    cores busy through those, where splitting every kernel over the cores leaves one idle
    (measured: local 1x1 masks of the 85M stack in 152 ms instead of 202). Torch's
    intra-op thread count is set to 1 for the duration (two thread teams on two cores would
    wait on each other) and restored after, also on failure; results keep the items' order.
    One item at a time when ``parallel`` is False (tensors off the CPU), when torch runs one
    thread, when the thread count cannot change, or when another call is already spreading
    its items."""
    threads = torch.get_num_threads()
    if not parallel or threads <= 1 or len(items) <= 1 or not thread_count_settable():
        return [work(item) for item in items]
    if not _op_lock.acquire(blocking=False):
        return [work(item) for item in items]
    try:
        return _spread(work, items, threads)
    finally:
        _op_lock.release()


def _spread(
    work: Callable[[_Item], _Result], items: Sequence[_Item], threads: int
) -> list[_Result]:
    """:func:`map_ops`'s parallel case: ``threads`` items in flight, results in order."""
    pool = workers("ops")

    def single_threaded(item: _Item) -> _Result:
        torch.set_num_threads(1)
        return work(item)

    torch.set_num_threads(1)
    pending: list[Future[_Result]] = []
    try:
        pending = [pool.submit(single_threaded, item) for item in items[:threads]]
        results: list[_Result] = []
        for index in range(len(items)):
            results.append(pending[index].result())
            if index + threads < len(items):
                pending.append(pool.submit(single_threaded, items[index + threads]))
        return results
    finally:
        wait(pending)  # nothing of this call runs on once it returns or raises
        torch.set_num_threads(threads)
