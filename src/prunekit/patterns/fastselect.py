"""Exact block selection by counting, near the memory-bandwidth floor.

Which blocks to remove is decided by a threshold on the block scores. A full sort, or one
``kthvalue`` over every score, costs far more than reading the scores once; here the
threshold is found in a few passes that only *compare and count*:

1. a small uniform **sample** of the scores (a few hundred thousand values) estimates where
   the threshold lies, caps included, and gives a narrow **bracket** ``[a, b)`` around it;
2. one **pass** per op counts the blocks below ``a``, keeps the comparison ``>= b`` (the bulk
   of the mask) and gathers the few **candidates** in ``[a, b)``;
3. the candidates alone (sorted by score, then op, then index) settle the exact count of
   every op under its caps, and which candidates go.

The answer never depends on the sample: a bracket that misses the threshold (rare) is
detected by the exact counts and widened, and the result is the same exact selection as
the reference in :mod:`prunekit.patterns.selection` (ties to the earlier op, then the lower
index; the total nearest to the target in whole blocks, half-way to fewer). Extra memory is
one bool per block of the op being counted plus the candidates.

This path handles blocks of equal size within each op (every divisible shape); layouts with
partial edge blocks use the radix search in :mod:`prunekit.patterns.selection`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from prunekit.errors import ImpossibleTargetError

# Sample sizes: a bracket of +-MARGIN_SIGMAS standard deviations of the sample quantile holds
# the threshold with overwhelming probability and about 10/sqrt(S) of the blocks.
GLOBAL_SAMPLE = 1 << 18
LOCAL_SAMPLE = 1 << 14
MARGIN_SIGMAS = 5.0
# A bracket that misses is widened 8x, then 64x, then opened: the answer stays exact.
_WIDENINGS = 4
_SEED = 0x5EED


@dataclass
class FastOp:
    """One op's block scores for the counting selection.

    ``values``: 1-D block scores (any float dtype; pre-removed blocks already set to -inf),
    or a function that computes them anew each time, so that a model too large for all its
    scores at once is handled one op at a time. ``count``: the number of blocks.
    ``size``: elements per block. ``lo``/``hi``: blocks the op must / may remove.
    """

    values: Tensor | Callable[[], Tensor]
    size: int
    lo: int
    hi: int
    count: int = -1
    op: int = -1  # global op id: ties between ops go to the lower id
    offset: int = 0  # index of this part's first block in the whole op (row shards)
    whole: int = -1  # blocks of the whole op (all parts); lo and hi are for the whole op

    def __post_init__(self) -> None:
        if self.count < 0:
            if callable(self.values):
                raise ValueError("FastOp: give count when values is a function")
            self.count = self.values.numel()
        if self.whole < 0:
            self.whole = self.count

    def get(self) -> Tensor:
        """The block scores (computed now if ``values`` is a function)."""
        return self.values() if callable(self.values) else self.values


@dataclass
class Resolution:
    """How to rebuild one op's keep mask once the counts are known, without holding it:
    keep blocks at or above ``b``, plus the candidates flagged ``spared``; or, when the op's
    own threshold lies outside the bracket, keep all but its ``k`` lowest."""

    k: int
    b: float | None = None
    candidates: Tensor | None = None
    spared: Tensor | None = None
    keep: Tensor | None = None  # the mask itself, when it was kept from the pass

    def materialize(self, op: FastOp, scratch: _Scratch | None = None) -> Tensor:
        """The op's bool keep mask (True = keep)."""
        if self.candidates is None or self.spared is None:
            return keep_all_but_lowest(op.get(), self.k, scratch=scratch)
        if self.keep is not None:
            keep = self.keep
            self.keep = None
        else:
            values = op.get()
            keep = (
                values >= self.b
                if self.b is not None
                else torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
            )
        keep[self.candidates[self.spared]] = True
        return keep


@dataclass
class _Pass:
    """What one counting pass learned about one op for a bracket ``[a, b)``."""

    below: int  # blocks with value < a
    keep: Tensor | None  # bool per block: value >= b (kept whatever the threshold in the bracket)
    candidates: Tensor  # indices of blocks in [a, b), ascending
    candidate_values: Tensor  # their values (float64), in index order


class _Scratch:
    """A reused work buffer, so that no pass allocates (and page-faults) a full-size tensor
    besides the mask it returns. Sized for the largest op seen, padded to 8 bytes."""

    def __init__(self) -> None:
        self.raw = torch.empty(0, dtype=torch.uint8)

    def get(self, n: int, device: torch.device) -> Tensor:
        padded = -(-n // 8) * 8
        if self.raw.numel() < padded or self.raw.device != device:
            self.raw = torch.empty(padded, dtype=torch.uint8, device=device)
        return self.raw[:padded]


def _count_pass(
    values: Tensor, a: float | None, b: float | None, scratch: _Scratch, *, retain: bool = True
) -> _Pass:
    """One look at every block: how many lie below ``a``, which lie at or above ``b`` (the
    returned keep mask) and which lie in between (the candidates)."""
    n = values.numel()
    raw = scratch.get(n, values.device)
    flags = raw.view(torch.bool)
    keep = values >= b if b is not None else torch.zeros(n, dtype=torch.bool, device=values.device)
    if a is None:
        below = 0
        flags[:n] = False
    else:
        torch.lt(values, a, out=flags[:n])
        below = int(torch.count_nonzero(flags[:n]))
    flags[:n].logical_or_(keep).logical_not_()  # neither below a nor kept: a candidate
    flags[n:] = False
    candidates = _sparse_nonzero(raw)
    return _Pass(below, keep if retain else None, candidates, values[candidates].to(torch.float64))


def _sparse_nonzero(raw: Tensor) -> Tensor:
    """Indices of the nonzero bytes of a padded uint8 buffer, ascending, when few are set:
    ``nonzero`` over 8-byte words first (8x fewer elements), then within the hit words."""
    words = raw.view(torch.int64)
    hit = torch.nonzero(words).squeeze(1)
    if hit.numel() == 0:
        return hit
    inside = torch.nonzero(raw.view(-1, 8)[hit])
    return hit[inside[:, 0]] * 8 + inside[:, 1]


def _sample(values: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """``count`` values drawn uniformly (with replacement), as float64."""
    n = values.numel()
    if n <= count:
        return values.reshape(-1).to(torch.float64)
    index = torch.randint(n, (count,), generator=generator).to(values.device)
    return values.reshape(-1)[index].to(torch.float64)


def _bracket(
    sorted_sample: Tensor, position: float, widen: int = 0
) -> tuple[float | None, float | None]:
    """Sample values ``MARGIN_SIGMAS * 8**widen`` standard deviations of rank around
    ``position``. The bracket ``[a, b)`` holds whole tie groups: ``a`` is a sample value and
    ``b`` the next larger sample value, so a value shared by many blocks (bf16 scores) is
    never split by the bracket's upper end."""
    if widen >= _WIDENINGS - 1:
        return None, None  # the last resort: every block is a candidate
    size = sorted_sample.numel()
    q = min(max(position / max(size, 1), 0.0), 1.0)
    margin = MARGIN_SIGMAS * 8**widen * math.sqrt(size * q * (1 - q) + 1.0) + 2
    low, high = math.floor(position - margin), math.ceil(position + margin)
    a = float(sorted_sample[low]) if low > 0 else None
    b = None
    if high < size:
        above = int(torch.searchsorted(sorted_sample, sorted_sample[high : high + 1], right=True))
        b = float(sorted_sample[above]) if above < size else None
    return a, b


def keep_all_but_lowest(
    values: Tensor,
    k: int,
    *,
    generator: torch.Generator | None = None,
    scratch: _Scratch | None = None,
) -> Tensor:
    """Bool per block, True = keep: every block but the ``k`` lowest (ties: lower index)."""
    n = values.numel()
    if k <= 0:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    if k >= n:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    generator = generator or torch.Generator().manual_seed(_SEED)
    scratch = scratch or _Scratch()
    sample = torch.sort(_sample(values, LOCAL_SAMPLE, generator)).values
    position = k / n * sample.numel()
    for widen in range(_WIDENINGS):
        a, b = _bracket(sample, position, widen)
        found = _count_pass(values, a, b, scratch)
        take = k - found.below
        if 0 <= take <= found.candidates.numel():
            rank = _ranks(found.candidate_values)
            return Resolution(k, b, found.candidates, rank >= take, found.keep).materialize(
                FastOp(values, 1, 0, n)
            )
    raise AssertionError("unreachable: the widest bracket holds every block")  # pragma: no cover


def lowest_k(values: Tensor, k: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Bool per block: True for the ``k`` lowest values, ties to the lower index."""
    return ~keep_all_but_lowest(values, k, generator=generator)


def _ranks(candidate_values: Tensor) -> Tensor:
    """Each candidate's rank in (value, index) order; candidates come in index order."""
    order = torch.sort(candidate_values, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank


def global_select(ops: Sequence[FastOp], target: int, total: int | None = None) -> list[Tensor]:
    """Bool keep-mask per op (True = keep): ``target`` elements removed in all, lowest blocks
    first across ops (ties: earlier op, then lower index), each op within ``[lo, hi]``
    blocks, the total nearest to ``target`` in whole blocks (half-way: fewer)."""
    scratch = _Scratch()
    plans = global_plan(ops, target, total, retain=True, scratch=scratch)
    return [plan.materialize(op, scratch) for op, plan in zip(ops, plans, strict=True)]


class Comm:
    """How the ops' parts exchange counts and candidates. This one is a single process with
    whole ops: nothing is exchanged. :mod:`prunekit.distributed` has the torch.distributed
    one, with which the same code computes global masks over ops spread across ranks."""

    rank = 0

    def sum(self, tensor: Tensor) -> Tensor:
        """Elementwise sum over ranks."""
        return tensor

    def gather(self, tensor: Tensor) -> tuple[Tensor, list[int]]:
        """Every rank's 1-D ``tensor`` concatenated in rank order, and their lengths."""
        return tensor, [tensor.numel()]

    @property
    def single(self) -> bool:
        return True


LOCAL = Comm()


@dataclass
class _Table:
    """What every rank knows of every op (identical on all ranks)."""

    ids: Tensor  # global op ids, ascending
    blocks: Tensor  # blocks of the whole op
    size: Tensor  # elements per block
    lo: Tensor
    hi: Tensor

    def position(self, op_ids: Tensor) -> Tensor:
        return torch.searchsorted(self.ids, op_ids)


def _op_table(ops: Sequence[FastOp], comm: Comm) -> _Table:
    rows = torch.tensor(
        [[op.op, op.whole, op.size, op.lo, op.hi] for op in ops], dtype=torch.int64
    ).reshape(-1, 5)
    gathered, _ = comm.gather(rows.reshape(-1))
    rows = gathered.reshape(-1, 5)
    ids, first = _unique_first(rows[:, 0])
    rows = rows[first]
    return _Table(ids, rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4])


def _unique_first(values: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted unique values and the index of each one's first occurrence."""
    unique, inverse = torch.unique(values, sorted=True, return_inverse=True)
    first = torch.full((unique.numel(),), values.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(values.numel()), reduce="amin")
    return unique, first


def _numbered(ops: Sequence[FastOp]) -> list[FastOp]:
    """Ops without a global id get their position (single process: ops are whole)."""
    return [op if op.op >= 0 else replace(op, op=i) for i, op in enumerate(ops)]


def global_plan(
    ops: Sequence[FastOp],
    target: int,
    total: int | None = None,
    *,
    retain: bool = False,
    scratch: _Scratch | None = None,
    comm: Comm = LOCAL,
) -> list[Resolution]:
    """How each op's keep mask is rebuilt under global scope (see :func:`global_select`).

    With ``retain=False`` no mask outlives its counting pass: only counts and candidates
    (a fraction of a percent of the blocks) are kept, and :meth:`Resolution.materialize`
    recomputes each mask with one comparison when it is wanted, one op at a time.

    With a distributed ``comm``, ``ops`` are this rank's parts (whole ops or row shards,
    see :class:`FastOp`); every rank calls this with the same ``target``, and counts and
    candidates are exchanged, never weights."""
    ops = _numbered(ops)
    table = _op_table(ops, comm)
    reachable = int((table.hi * table.size).sum())
    if reachable < target:
        total = total or int((table.blocks * table.size).sum())
        raise ImpossibleTargetError(
            f"the pattern and the per-op caps allow removing at most {reachable} of {total} "
            f"elements ({reachable / max(total, 1):.2%}) but the target asks for {target} "
            f"({target / max(total, 1):.2%}): short by {target - reachable} elements; raise "
            "max_sparsity_ratio_per_op or lower the target"
        )
    scratch = scratch or _Scratch()
    if int((table.lo * table.size).sum()) >= target:
        return _per_op_plans(ops, table, table.lo, retain, scratch, comm)
    generator = torch.Generator().manual_seed(_SEED)
    sample, position = _global_estimate(ops, table, target, generator, comm)
    for widen in range(_WIDENINGS):
        a, b = _bracket(sample, position, widen)
        passes = [_count_pass(op.get(), a, b, scratch, retain=retain) for op in ops]
        outcome = _solve_candidates(ops, passes, table, target, comm)
        if isinstance(outcome, str):
            continue
        counts, spared, in_window = outcome
        plans = [
            Resolution(int(counts[i]), b, found.candidates, flags, found.keep)
            for found, flags, i in zip(
                passes, spared, table.position(_ids(ops)).tolist(), strict=True
            )
        ]
        if not bool(in_window.all()):  # ops whose own threshold lies outside the bracket
            outside = _per_op_plans(ops, table, counts, retain, scratch, comm, ~in_window)
            plans = [o if o is not None else p for p, o in zip(plans, outside, strict=True)]
        return plans
    raise AssertionError("unreachable: an open bracket holds every block")  # pragma: no cover


def _ids(ops: Sequence[FastOp]) -> Tensor:
    return torch.tensor([op.op for op in ops], dtype=torch.int64)


def _per_op_plans(
    ops: Sequence[FastOp],
    table: _Table,
    counts: Tensor,
    retain: bool,
    scratch: _Scratch,
    comm: Comm,
    which: Tensor | None = None,
) -> list[Any]:
    """Each chosen op on its own: its ``counts`` lowest blocks. One op at a time, on every
    rank in the same order, so that an op split across ranks agrees on its threshold."""
    plans: list[Any] = [None] * len(ops)
    chosen = range(table.ids.numel()) if which is None else torch.nonzero(which).flatten().tolist()
    for i in chosen:
        op_id, k = int(table.ids[i]), int(counts[i])
        mine = [j for j, op in enumerate(ops) if op.op == op_id]
        if comm.single:
            for j in mine:
                plans[j] = Resolution(k)
            continue
        parts = [replace(ops[j], lo=0, hi=int(table.blocks[i])) for j in mine]
        sub = (
            global_plan(parts, k * int(table.size[i]), retain=retain, scratch=scratch, comm=comm)
            if k > 0
            else [Resolution(0) for _ in parts]
        )
        for j, plan in zip(mine, sub, strict=True):
            plans[j] = plan
    return plans


def _global_sample(blocks: int) -> int:
    """Samples for a global bracket: GLOBAL_SAMPLE, more on very large models, so that the
    candidates (about 5 / sqrt(samples) of all blocks) stay small in memory."""
    return max(GLOBAL_SAMPLE, min(1 << 22, blocks // 1024))


def _global_estimate(
    ops: Sequence[FastOp], table: _Table, target: int, generator: torch.Generator, comm: Comm
) -> tuple[Tensor, float]:
    """A sorted sample of every op's scores (each sample stands for ``blocks / samples``
    blocks of its op) and the position in it where the capped total reaches ``target``."""
    blocks = int(table.blocks.sum())
    wanted = _global_sample(blocks)
    drawn = [_sample(op.get(), max(1, round(wanted * op.count / blocks)), generator) for op in ops]
    values, _ = comm.gather(torch.cat(drawn) if drawn else torch.zeros(0, dtype=torch.float64))
    owners, _ = comm.gather(
        torch.cat(
            [
                torch.full((d.numel(),), op.op, dtype=torch.int64)
                for d, op in zip(drawn, ops, strict=True)
            ]
        )
        if drawn
        else torch.zeros(0, dtype=torch.int64)
    )
    owner = table.position(owners)
    by_op = torch.sort(values, stable=True).indices
    by_op = by_op[torch.sort(owner[by_op], stable=True).indices]  # (op, value) order
    per_op = torch.bincount(owner, minlength=table.ids.numel())
    start = torch.cumsum(per_op, 0) - per_op
    rank = torch.empty_like(owner)
    rank[by_op] = torch.arange(owner.numel()) - start[owner[by_op]]
    order = torch.sort(values, stable=True).indices
    owner, rank = owner[order], rank[order]
    weight = (table.blocks.to(torch.float64) / per_op.clamp(min=1))[owner]
    lo, hi = table.lo.to(torch.float64)[owner], table.hi.to(torch.float64)[owner]
    size = table.size.to(torch.float64)[owner]
    before = rank.to(torch.float64) * weight
    gained = size * (torch.clamp(before + weight, lo, hi) - torch.clamp(before, lo, hi))
    start_elements = float(
        (table.size * torch.clamp(torch.zeros_like(table.lo), table.lo, table.hi)).sum()
    )
    reached = start_elements + torch.cumsum(gained, 0)
    goal = torch.tensor([float(target)], dtype=torch.float64)
    return values[order], float(torch.searchsorted(reached, goal))


def _solve_candidates(
    ops: Sequence[FastOp], passes: Sequence[_Pass], table: _Table, target: int, comm: Comm
) -> tuple[Tensor, list[Tensor], Tensor] | str:
    """Exact per-op counts (table order), each local candidate's spared flag, and which
    ops' counts fall in the bracket; or "low"/"high" if the bracket missed."""
    n_ops = table.ids.numel()
    position = table.position(_ids(ops))
    below_local = torch.zeros(n_ops, dtype=torch.int64)
    below_local.index_add_(0, position, torch.tensor([p.below for p in passes], dtype=torch.int64))
    below = comm.sum(below_local)
    lo, hi, size = table.lo, table.hi, table.size
    start = int((size * torch.clamp(below, lo, hi)).sum())
    if start >= target:
        return "low"
    lengths = [p.candidates.numel() for p in passes]
    local_values = (
        torch.cat([p.candidate_values for p in passes])
        if passes
        else torch.zeros(0, dtype=torch.float64)
    )
    local_owner = (
        torch.repeat_interleave(position, torch.tensor(lengths, dtype=torch.int64))
        if passes
        else torch.zeros(0, dtype=torch.int64)
    )
    local_index = (
        torch.cat(
            [p.candidates.to(torch.int64) + op.offset for p, op in zip(passes, ops, strict=True)]
        )
        if passes
        else torch.zeros(0, dtype=torch.int64)
    )
    values, sizes = comm.gather(local_values)
    owner, _ = comm.gather(local_owner)
    index, _ = comm.gather(local_index)
    # The merged order: value, then op, then block index (the tie rule).
    order = _lexsort(values, owner, index, presorted=comm.single)
    owner_sorted = owner[order]
    rank_sorted = _rank_within(owner_sorted, n_ops)  # (value, index) order within each op
    counted = below[owner_sorted] + rank_sorted
    gained = torch.where(
        (counted >= lo[owner_sorted]) & (counted < hi[owner_sorted]), size[owner_sorted], 0
    )
    reached = start + torch.cumsum(gained, 0)
    if reached.numel() == 0 or int(reached[-1]) < target:
        return "high"
    last = int(torch.searchsorted(reached, torch.tensor([target])))
    overshoot = int(reached[last]) - target
    if overshoot > 0 and overshoot >= int(gained[last]) - overshoot:
        last -= 1  # dropping the last block lands nearer (or as near): fewer
    taken = torch.bincount(owner_sorted[: last + 1], minlength=n_ops)
    counts = torch.clamp(below + taken, lo, hi)
    per_op = torch.bincount(owner, minlength=n_ops)
    in_window = (counts >= below) & (counts <= below + per_op)
    rank = torch.empty_like(rank_sorted)
    rank[order] = rank_sorted
    mine = sum(sizes[: comm.rank])
    spared = rank[mine : mine + sum(lengths)] >= (counts - below)[local_owner]
    return counts, list(torch.split(spared, lengths)), in_window


def _lexsort(values: Tensor, owner: Tensor, index: Tensor, *, presorted: bool) -> Tensor:
    """Order by (value, owner, index). ``presorted``: the input already runs in (owner,
    index) order, so one stable sort by value is enough."""
    if presorted:
        return torch.sort(values, stable=True).indices
    order = torch.sort(index, stable=True).indices
    order = order[torch.sort(owner[order], stable=True).indices]
    return order[torch.sort(values[order], stable=True).indices]


def _rank_within(owner: Tensor, groups: int) -> Tensor:
    """For a sequence of group ids: how many earlier entries share each entry's group."""
    order = torch.sort(owner, stable=True).indices
    counts = torch.bincount(owner, minlength=groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(owner)
    rank[order] = torch.arange(owner.numel()) - starts[owner[order]]
    return rank
