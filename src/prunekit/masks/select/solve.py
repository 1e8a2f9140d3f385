"""The exact counts of a global selection, from every op's counting pass: the steps the
single-process and the multi-rank engines share.

Given each op's pass for its bracket, every op removes its blocks below ``a`` (its blocks
below its own bracket plus its candidates below ``a``), and the candidates in the global
bracket ``[a, b)`` are taken in (value, op) order, each op's caps applied, until the target
is met (:func:`cross`). When no cap binds inside the bracket and blocks are of one size, the
threshold is simply the k-th lowest candidate (:func:`kth_counts`). Either way a bracket that
does not hold the threshold is detected (:class:`Missed`) and the caller widens it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.masks.numeric import working_dtype
from prunekit.masks.select.brackets import Brackets
from prunekit.masks.select.kernels import concat, count_true, kth_smallest
from prunekit.masks.select.passes import CountPass, Verdict
from prunekit.masks.select.scored import OpTable


@dataclass(frozen=True)
class Missed:
    """The bracket does not hold the threshold (``why`` says where it lies); the caller
    widens the bracket and counts again."""

    why: str


@dataclass(frozen=True)
class Solved:
    """Exact blocks removed per op (table order), and each local part's verdict (None:
    the op's own threshold lies outside its bracket; its blocks are found on their own)."""

    counts: Tensor
    verdicts: list[Verdict | None]


@dataclass(frozen=True)
class Base:
    """Every op's blocks below its own bracket (``below``) and below the global ``a``
    (``below_a``), and the elements removed once each op takes its blocks below ``a``
    within its caps (``start``)."""

    below: Tensor
    below_a: Tensor
    start: int


def local_below(
    passes: Sequence[CountPass], where: Sequence[int], brackets: Brackets, n_ops: int
) -> Tensor:
    """``(2, ops)``: this process's blocks below each op's own bracket, and its candidates
    below the global ``a`` (none for an op bracketed by the global bracket itself)."""
    a = brackets.floor
    position = torch.tensor(list(where), dtype=torch.int64)
    under_a = torch.tensor(
        [0 if brackets.shared[i] else p.count_below(a) for p, i in zip(passes, where, strict=True)],
        dtype=torch.int64,
    )
    own_below = torch.tensor([p.below for p in passes], dtype=torch.int64)
    local = torch.zeros(2, n_ops, dtype=torch.int64)
    local[0].index_add_(0, position, own_below)
    local[1].index_add_(0, position, under_a)
    return local


def base_of(summed: Tensor, table: OpTable, brackets: Brackets, target: int) -> Base | Missed:
    """The :class:`Base` from :func:`local_below` summed over every part of every op, or
    where the bracket missed. An op bracketed apart must be saturated there: all its
    blocks below ``a`` reach its upper cap, or its blocks below ``b`` stay within its
    lower cap."""
    below, below_a = summed[0], summed[0] + summed[1]
    lo, hi, size = table.lo, table.hi, table.size
    apart_below = torch.tensor(brackets.below, dtype=torch.bool)
    apart_above = torch.tensor(brackets.above, dtype=torch.bool)
    if bool((below_a[apart_below] < hi[apart_below]).any()):
        return Missed("an op bracketed below a does not reach its upper cap there")
    if bool((below[apart_above] > lo[apart_above]).any()):
        return Missed("an op bracketed above b removes more than its lower cap below b")
    start = int((size * torch.clamp(below_a, lo, hi)).sum())
    if start >= target:
        return Missed("the threshold lies below a")
    return Base(below, below_a, start)


def caps_free(base: Base, in_range: Tensor, table: OpTable) -> bool:
    """Whether no op's cap binds inside the global bracket: every op with candidates there
    starts at or above its lower cap and, taking them all, stays within its upper cap."""
    walked = in_range > 0
    fits = (base.below_a >= table.lo) & (base.below_a + in_range <= table.hi)
    return bool(fits[walked].all())


def whole_blocks(need: int, block: int) -> int:
    """How many blocks of ``block`` elements land nearest to ``need`` elements when the
    last one may overshoot: the ceiling, one fewer when that is as near or nearer."""
    blocks = -(-need // block)
    overshoot = blocks * block - need
    if overshoot > 0 and overshoot >= block - overshoot:
        blocks -= 1
    return blocks


def kth_counts(
    inside: Sequence[Tensor], where: Sequence[int], table: OpTable, base: Base, target: int
) -> Tensor | Missed:
    """Blocks per op (table order) when blocks are of one size and no cap binds in the
    bracket: the threshold is the k-th lowest of the candidates in it (a selection, no
    sort), ties going to the earlier op. ``inside``: each op's candidates in ``[a, b)``."""
    n_ops = table.ids.numel()
    block = int(table.size[0])
    in_bracket = sum(w.numel() for w in inside)
    if base.start + in_bracket * block < target:
        return Missed("the threshold lies at or above b")
    take = whole_blocks(target - base.start, block)
    taken = torch.zeros(n_ops, dtype=torch.int64)
    if take > 0:
        dtype = working_dtype(w.dtype for w in inside)  # pairs compare and sort faster narrow
        tau = kth_smallest(concat([w.to(dtype) for w in inside], dtype), take)
        lower = torch.tensor([count_true(w < tau) for w in inside], dtype=torch.int64)
        tied = torch.tensor([count_true(w == tau) for w in inside], dtype=torch.int64)
        left = take - int(lower.sum())  # blocks at tau, to the earlier ops first
        before = torch.cumsum(tied, 0) - tied
        at_tau = torch.clamp(left - before, min=0).minimum(tied)
        taken.index_add_(0, torch.tensor(list(where), dtype=torch.int64), lower + at_tau)
    return torch.clamp(base.below_a + taken, table.lo, table.hi)


@dataclass(frozen=True)
class Walk:
    """The candidates in the global bracket as (value, op, count) pairs in (value, op)
    order. ``within``: blocks of the same op before each pair, when some cap binds inside
    the bracket (None: every pair counts in full)."""

    owner: Tensor
    count: Tensor
    within: Tensor | None


def cross(walk: Walk, table: OpTable, base: Base, target: int) -> Tensor | Missed:
    """Blocks per op (table order): walk the pairs in order, each op's caps applied, until
    the elements removed reach ``target`` (the last block nearest to it)."""
    lo, hi, size = table.lo, table.hi, table.size
    one_size = bool((size == size[0]).all()) if size.numel() else True
    size_p = size[:1] if one_size else size[walk.owner]
    if walk.within is None:
        counted = walk.count
    else:
        before = base.below_a[walk.owner] + walk.within
        lo_p, hi_p = lo[walk.owner], hi[walk.owner]
        counted = torch.clamp(before + walk.count, lo_p, hi_p) - torch.clamp(before, lo_p, hi_p)
    reached = base.start + torch.cumsum(counted * size_p, 0)
    if reached.numel() == 0 or int(reached[-1]) < target:
        return Missed("the threshold lies at or above b")
    at = int(torch.searchsorted(reached, torch.tensor([target])))
    reached_before = int(reached[at - 1]) if at > 0 else base.start
    crossing_op = int(walk.owner[at])
    blocks_needed = whole_blocks(target - reached_before, int(size[crossing_op]))
    first_counted = 0  # blocks the op's lower cap took before this pair (none when free)
    if walk.within is not None:
        before_cross = int(base.below_a[crossing_op]) + int(walk.within[at])
        first_counted = max(before_cross, int(lo[crossing_op])) - before_cross
    taken = torch.zeros(table.ids.numel(), dtype=torch.int64).index_add_(
        0, walk.owner[:at], walk.count[:at]
    )
    taken[crossing_op] += first_counted + blocks_needed
    return torch.clamp(base.below_a + taken, lo, hi)
