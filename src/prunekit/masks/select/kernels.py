"""Kernels of the selection engine: the few steps that torch's CPU kernels do slowly,
through numpy.

Why numpy: on CPU, numpy sorts with x86-simd-sort (AVX-512 / AVX2) and counts set bytes
with vector instructions, where torch's kernels are generic. Measured on this project's
2-core machine: 600K float32 values sorted in 1.6 ms (torch: 31 ms), 85M flags counted in
6 ms (torch ``count_nonzero``: 22 ms), 665K (value, op) pairs ordered in 4 ms (torch's
stable sort: 61 ms). CPU tensors are handed to numpy without a copy; tensors on other
devices (CUDA) use torch's kernels, which are fast there.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
from torch import Tensor

from prunekit.masks.numeric import sortable_keys
from prunekit.masks.select.threads import workers

# numpy has no bfloat16: these dtypes are widened to float32 (exactly) before sorting.
_NUMPY_FLOATS = (torch.float32, torch.float64)


def _on_host(tensor: Tensor) -> bool:
    return tensor.device.type == "cpu"


# Below this many elements a comparison runs on the calling thread alone.
_SPLIT_FROM = 1 << 17


def concat(tensors: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """``torch.cat``, also of no tensors (an empty tensor of ``dtype``)."""
    return torch.cat(list(tensors)) if tensors else torch.zeros(0, dtype=dtype)


def greater_equal(values: Tensor, threshold: float, out: Tensor | None = None) -> Tensor:
    """``values >= threshold`` as bools (into ``out``, bool or uint8, when given), over
    torch's thread count. On CPU numpy compares about 1.5x faster than torch writes bytes
    (measured: 85M float32 in 21 ms on 2 threads, torch 32 ms; single-threaded 27 vs 60)."""
    values = values.reshape(-1)
    n = values.numel()
    if out is None:
        out = torch.empty(n, dtype=torch.bool, device=values.device)
    if not _on_host(values) or values.dtype not in _NUMPY_FLOATS or not values.is_contiguous():
        # Into bools: torch compares bf16 into a bool tensor twice as fast as into bytes.
        torch.ge(values, threshold, out=out.view(torch.bool))
        return out
    source = values.detach().numpy()
    target = out.numpy().view(np.bool_)
    bound = source.dtype.type(threshold)  # exact: thresholds are scores of this dtype
    threads = max(1, min(torch.get_num_threads(), n // _SPLIT_FROM))
    if threads == 1:
        np.greater_equal(source, bound, out=target)
        return out
    edges = [n * t // threads // 64 * 64 for t in range(threads)] + [n]
    pending: list[Future[object]] = [
        workers("chunks").submit(np.greater_equal, source[lo:hi], bound, out=target[lo:hi])
        for lo, hi in itertools.pairwise(edges[1:])
    ]
    np.greater_equal(source[: edges[1]], bound, out=target[: edges[1]])
    for job in pending:
        job.result()
    return out


def count_true(flags: Tensor) -> int:
    """How many entries of a bool (or 0/1 uint8) tensor are set."""
    if _on_host(flags) and flags.is_contiguous():
        return int(np.count_nonzero(flags.detach().view(torch.bool).numpy()))
    return int(torch.count_nonzero(flags))


def sorted_values(values: Tensor) -> Tensor:
    """The 1-D ``values`` ascending, as float32 or float64 (half precisions are widened,
    exactly). NaN must have been rejected before."""
    values = values.detach().reshape(-1)
    if values.dtype not in _NUMPY_FLOATS:
        values = values.to(torch.float32)
    if _on_host(values):
        return torch.from_numpy(np.sort(values.numpy(), kind="quicksort"))
    return torch.sort(values).values


def kth_smallest(values: Tensor, k: int) -> float:
    """The ``k``-th smallest (1-based) of the 1-D ``values``: a selection, not a sort."""
    values = values.detach().reshape(-1)
    if values.dtype not in _NUMPY_FLOATS:
        values = values.to(torch.float32)
    if _on_host(values):
        array = values.numpy()
        return float(np.partition(array, k - 1)[k - 1])
    return float(torch.kthvalue(values, k).values)


def rank_bracket(
    values: Tensor, low: int | None, high: int | None
) -> tuple[float | None, float | None]:
    """``(a, b)`` from the unsorted 1-D ``values``: ``a`` the value of 0-based rank ``low``,
    ``b`` the smallest value above the one of rank ``high`` (None when a rank is None or
    nothing lies above): selections instead of a sort (numpy's ``partition`` with one rank
    runs 4x faster than a sort; with two ranks at once it is slower than the sort)."""
    values = values.detach().reshape(-1)
    if not (_on_host(values) and values.dtype in _NUMPY_FLOATS):
        ordered = torch.sort(values).values
        a = float(ordered[low]) if low is not None else None
        if high is None:
            return a, None
        rest = ordered[high + 1 :]
        above = rest[rest > ordered[high]]
        return a, float(above.min()) if above.numel() else None
    return _rank_bracket_numpy(values.numpy(), low, high)


def _rank_bracket_numpy(
    array: np.ndarray[Any, Any], low: int | None, high: int | None
) -> tuple[float | None, float | None]:
    if high is None:
        return (float(np.partition(array, low)[low]) if low is not None else None), None
    split = np.partition(array, high)  # ranks above high lie after it, below before it
    rest = split[high + 1 :]
    above = rest[rest > split[high]]
    b = float(above.min()) if above.shape[0] else None
    if low is None:
        return None, b
    if low < high:
        return float(np.partition(split[:high], low)[low]), b
    return float(np.partition(split, low)[low]), b


def value_pairs(values: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct values of ``values`` ascending (as :func:`sorted_values` gives them,
    on the CPU, ``-0.0`` read as ``0.0``) and how many times each occurs: ``torch.unique(...,
    return_counts=True)``, faster."""
    ordered = sorted_values(values).cpu() + 0.0  # few: the bookkeeping is on the CPU
    n = ordered.numel()
    if n == 0:
        return ordered, torch.zeros(0, dtype=torch.int64, device=ordered.device)
    starts = torch.ones(n, dtype=torch.bool, device=ordered.device)
    starts[1:] = ordered[1:] != ordered[:-1]
    first = torch.nonzero(starts).flatten()
    ends = torch.cat([first[1:], torch.tensor([n], device=first.device)])
    return ordered[first], ends - first


def order_by_value(values: Tensor) -> Tensor:
    """The stable ascending order of the 1-D float ``values``: equal values keep their
    positions' order. When every value is exact in float32 (any score from float32, bf16
    or fp16), a value's 32-bit sortable key and its position are packed into one int64 and
    sorted; the packed keys are distinct, so an unstable (fast) sort is stable here."""
    n = values.numel()
    narrow = values.to(torch.float32)
    exact = values.dtype != torch.float64 or bool((narrow.to(torch.float64) == values).all())
    if _on_host(values) and n < (1 << 31) and exact:
        keys = sortable_keys(narrow).to(torch.int64).bitwise_left_shift_(32)
        del narrow
        keys |= torch.arange(n, dtype=torch.int64)
        packed = keys.numpy()
        packed.sort(kind="quicksort")  # in place: no second copy of the keys
        np.bitwise_and(packed, 0xFFFFFFFF, out=packed)
        return keys
    return torch.sort(values, stable=True).indices


# numpy's partition and sort along rows take these dtypes as they are (sortable keys are
# int32 or int64, scores float32 or float64); others are widened to float32 first.
_NUMPY_ROWS = (torch.float32, torch.float64, torch.int32, torch.int64)


def row_kth_smallest(values: Tensor, k: int) -> Tensor:
    """``(rows, 1)``: the ``k``-th smallest (1-based) value of every row of the 2-D
    ``values``, a selection per row, not a sort. On CPU numpy's ``partition`` along rows
    runs over the cores in chunks of rows (measured on a (4096, 11008) float32 tensor on 2
    cores: 0.45 s, where ``torch.kthvalue`` takes 4.1 s and ``torch.topk`` 1.0 s)."""
    if values.dtype not in _NUMPY_ROWS:
        values = values.to(torch.float32)
    if not _on_host(values):
        return torch.kthvalue(values, k, dim=1, keepdim=True).values
    source = values.detach().contiguous().numpy()
    out = np.empty((source.shape[0], 1), dtype=source.dtype)

    def chunk(lo: int, hi: int) -> None:
        out[lo:hi, 0] = np.partition(source[lo:hi], k - 1, axis=1)[:, k - 1]

    _over_row_chunks(chunk, source.shape[0], source.shape[1])
    return torch.from_numpy(out)


def row_sorted(values: Tensor) -> Tensor:
    """Every row of the 2-D ``values`` sorted ascending (numpy's SIMD sort on CPU, over the
    cores in chunks of rows)."""
    if values.dtype not in _NUMPY_ROWS:
        values = values.to(torch.float32)
    if not _on_host(values):
        return torch.sort(values, dim=1).values
    out = values.detach().contiguous().numpy().copy()

    def chunk(lo: int, hi: int) -> None:
        out[lo:hi].sort(axis=1, kind="quicksort")

    _over_row_chunks(chunk, out.shape[0], out.shape[1])
    return torch.from_numpy(out)


def _over_row_chunks(work: Any, rows: int, width: int) -> None:
    """``work(lo, hi)`` over contiguous row ranges covering ``rows``, one per thread when
    the rows hold enough values (numpy releases the GIL in its sorts)."""
    threads = max(1, min(torch.get_num_threads(), rows * width // _SPLIT_FROM, rows))
    edges = [rows * t // threads for t in range(threads)] + [rows]
    pending: list[Future[object]] = [
        workers("chunks").submit(work, lo, hi) for lo, hi in itertools.pairwise(edges[1:])
    ]
    work(edges[0], edges[1])
    for job in pending:
        job.result()
