"""Exact block selection by counting, near the memory-bandwidth floor.

Which blocks to remove is decided by a threshold on the block scores. A full sort, or one
``kthvalue`` over every score, costs far more than reading the scores once; here the
threshold is found in a few passes that only *compare and count*:

1. a small uniform **sample** of the scores (a few hundred thousand values) estimates where
   the threshold lies, caps included, and gives a narrow **bracket** ``[a, b)`` around it;
2. one **pass** per op counts the blocks below ``a``, keeps the comparison ``>= b`` (the bulk
   of the mask) and gathers the few **candidates** in ``[a, b)``;
3. the candidates, summed up as (score, count) pairs per op (a handful when scores are
   bf16 and tie in large groups), settle the exact count of every op under its caps: each
   op removes its blocks below a threshold score ``tau`` plus its first ``t`` blocks (by
   index) scoring exactly ``tau``.

The answer never depends on the sample: a bracket that misses the threshold (rare) is
detected by the exact counts and widened, and the result is the same exact selection as
the reference in :mod:`prunekit.patterns.selection` (ties to the earlier op, then the lower
index; the total nearest to the target in whole blocks, half-way to fewer). Extra memory is
one bool per block of the op being counted, plus the (score, count) pairs.

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

from prunekit._memory import release_freed_memory
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
    """One op's verdict: remove every block scoring below ``tau`` and the first ``ties``
    blocks (by index) scoring exactly ``tau``; or, when ``tau`` is None, the op's own
    threshold lies outside the bracket and its ``k`` lowest blocks are found on their own.

    ``kept``/``candidates``/``candidate_values``: the counting pass's mask (blocks at or
    above ``b``) and the blocks in the bracket, kept to rebuild the mask without another
    pass; None in streaming use, where the mask is recomputed from the scores."""

    k: int
    tau: float | None = None
    ties: int = 0
    kept: Tensor | None = None
    candidates: Tensor | None = None
    candidate_values: Tensor | None = None

    def materialize(self, op: FastOp, scratch: _Scratch | None = None) -> Tensor:
        """The op's bool keep mask (True = keep)."""
        if self.tau is None:
            return keep_all_but_lowest(op.get(), self.k, scratch=scratch)
        if self.kept is not None and self.candidates is not None:
            assert self.candidate_values is not None
            keep, self.kept = self.kept, None
            spared = self.candidate_values > self.tau
            tied = torch.nonzero(self.candidate_values == self.tau).flatten()
            spared[tied[self.ties :]] = True
            keep[self.candidates[spared]] = True
            return keep
        values = op.get()
        keep = values >= self.tau
        if self.ties > 0:
            raw = (scratch or _Scratch()).get(values.numel(), values.device)
            flags = raw.view(torch.bool)
            torch.eq(values, self.tau, out=flags[: values.numel()])
            flags[values.numel() :] = False
            keep[_sparse_nonzero(raw)[: self.ties]] = False
        return keep


@dataclass
class _Pass:
    """What one counting pass learned about one op part for a bracket ``[a, b)``."""

    below: int  # blocks with value < a
    pair_values: Tensor  # distinct values in [a, b), ascending (float64)
    pair_counts: Tensor  # how many blocks have each
    kept: Tensor | None = None  # value >= b, when retained
    candidates: Tensor | None = None  # indices of the blocks in [a, b), when retained
    candidate_values: Tensor | None = None


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
    """One look at every block: how many lie below ``a``, which lie at or above ``b`` and
    which in between (summed up as (value, count) pairs)."""
    n = values.numel()
    raw = scratch.get(n, values.device)
    flags = raw[:n]  # uint8 0/1: comparisons into bytes run about twice as fast as into bools
    keep = values >= b if b is not None else torch.zeros(n, dtype=torch.bool, device=values.device)
    if a is None:
        flags.fill_(1)
    else:
        torch.ge(values, a, out=flags)
    below = n - int(torch.count_nonzero(flags))
    flags.sub_(keep.view(torch.uint8))  # at or above a, but not kept: a candidate (keep <= it)
    raw[n:] = 0
    candidates = _sparse_nonzero(raw)
    candidate_values = values[candidates].to(torch.float64)
    pair_values, pair_counts = torch.unique(candidate_values, sorted=True, return_counts=True)
    if not retain:
        return _Pass(below, pair_values, pair_counts)
    return _Pass(below, pair_values, pair_counts, keep, candidates, candidate_values)


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
        verdict = _threshold(found.pair_values, found.pair_counts, k - found.below)
        if verdict is not None:
            tau, ties = verdict
            floor = a if a is not None else -math.inf
            plan = Resolution(
                k,
                tau if tau is not None else floor,
                ties,
                found.kept,
                found.candidates,
                found.candidate_values,
            )
            return plan.materialize(FastOp(values, 1, 0, n), scratch)
    raise AssertionError("unreachable: the widest bracket holds every block")  # pragma: no cover


def _threshold(
    pair_values: Tensor, pair_counts: Tensor, take: int
) -> tuple[float | None, int] | None:
    """(tau, ties) to remove ``take`` blocks from the bracket's pairs: every block below
    tau and ``ties`` blocks at tau (tau None: none from the bracket); None if ``take`` is
    not within the bracket."""
    total = int(pair_counts.sum())
    if take < 0 or take > total:
        return None
    if take == 0:
        return None, 0
    cumulative = torch.cumsum(pair_counts, 0)
    at = int(torch.searchsorted(cumulative, torch.tensor([take])))
    before = int(cumulative[at - 1]) if at > 0 else 0
    return float(pair_values[at]), take - before


def lowest_k(values: Tensor, k: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Bool per block: True for the ``k`` lowest values, ties to the lower index."""
    return ~keep_all_but_lowest(values, k, generator=generator)


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
    """Each op's verdict under global scope (see :func:`global_select`).

    With ``retain=False`` no mask outlives its counting pass: only counts and (value,
    count) pairs are kept, and :meth:`Resolution.materialize` recomputes each mask when it
    is wanted, one op at a time.

    With a distributed ``comm``, ``ops`` are this rank's parts (whole ops or row shards,
    see :class:`FastOp`); every rank calls this with the same ``target``, and counts and
    pairs are exchanged, never weights."""
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
        if not retain:
            release_freed_memory()
        outcome = _solve_pairs(ops, passes, table, target, comm)
        if outcome is None:
            continue
        counts, verdicts = outcome
        floor = a if a is not None else -math.inf
        plans: list[Resolution] = []
        outside = torch.zeros(table.ids.numel(), dtype=torch.bool)
        for op, found, verdict in zip(ops, passes, verdicts, strict=True):
            i = int(table.position(torch.tensor([op.op])))
            if verdict is None:
                outside[i] = True
                plans.append(Resolution(int(counts[i])))
                continue
            tau, ties = verdict
            plans.append(
                Resolution(
                    int(counts[i]),
                    floor if tau is None else tau,
                    ties,
                    found.kept,
                    found.candidates,
                    found.candidate_values,
                )
            )
        outside = comm.sum(outside.to(torch.int64)) > 0
        if bool(outside.any()):  # ops whose own threshold lies outside the bracket
            alone = _per_op_plans(ops, table, counts, retain, scratch, comm, outside)
            plans = [o if o is not None else p for p, o in zip(plans, alone, strict=True)]
        return plans
    raise AssertionError("unreachable: an open bracket holds every block")  # pragma: no cover


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
    """A sorted sample of every op's scores and the position in it where the estimated
    capped total reaches ``target`` (each sample of an op stands for ``blocks / samples``
    of its blocks). Found by bisection over per-op sorted samples, so the extra memory is
    the sample itself (a few MB), whatever the model's size."""
    blocks = int(table.blocks.sum())
    wanted = _global_sample(blocks)
    drawn = [_sample(op.get(), max(1, round(wanted * op.count / blocks)), generator) for op in ops]
    values, _ = comm.gather(_cat(drawn, torch.float64))
    owners, _ = comm.gather(
        _cat(
            [
                torch.full((d.numel(),), op.op, dtype=torch.int64)
                for d, op in zip(drawn, ops, strict=True)
            ],
            torch.int64,
        )
    )
    owner = table.position(owners)
    del owners
    by_op = torch.sort(owner, stable=True).indices
    per_op = torch.bincount(owner, minlength=table.ids.numel())
    samples = [torch.sort(part).values for part in torch.split(values[by_op], per_op.tolist())]
    del by_op, owner
    merged = torch.sort(values).values
    del values
    weight = table.blocks.to(torch.float64) / per_op.clamp(min=1)
    lo, hi = table.lo.to(torch.float64), table.hi.to(torch.float64)
    size = table.size.to(torch.float64)

    def reached(r: int) -> float:
        """Estimated elements removed with every sample up to merged[r] (inclusive)."""
        value = merged[r : r + 1]
        counts = torch.tensor(
            [float(torch.searchsorted(part, value, right=True)) for part in samples],
            dtype=torch.float64,
        )
        return float((size * torch.clamp(counts * weight, lo, hi)).sum())

    low, high = 0, merged.numel()  # the first r whose estimate reaches the target
    while low < high:
        middle = (low + high) // 2
        if reached(middle) >= target:
            high = middle
        else:
            low = middle + 1
    return merged, float(low)


def _solve_pairs(
    ops: Sequence[FastOp], passes: Sequence[_Pass], table: _Table, target: int, comm: Comm
) -> tuple[Tensor, list[tuple[float | None, int] | None]] | None:
    """Exact per-op counts (table order) and each local part's (tau, ties) verdict (None:
    outside the bracket), from every part's pairs; None if the bracket missed."""
    n_ops = table.ids.numel()
    position = table.position(_ids(ops))
    below_local = torch.zeros(n_ops, dtype=torch.int64)
    below_local.index_add_(0, position, torch.tensor([p.below for p in passes], dtype=torch.int64))
    below = comm.sum(below_local)
    lo, hi, size = table.lo, table.hi, table.size
    start = int((size * torch.clamp(below, lo, hi)).sum())
    if start >= target:
        return None  # the threshold lies below a
    lengths = torch.tensor([p.pair_values.numel() for p in passes], dtype=torch.int64)
    values, _ = comm.gather(_cat([p.pair_values for p in passes], torch.float64))
    counts, _ = comm.gather(_cat([p.pair_counts for p in passes], torch.int64))
    owner, _ = comm.gather(torch.repeat_interleave(position, lengths))
    offset, _ = comm.gather(
        torch.repeat_interleave(torch.tensor([op.offset for op in ops], dtype=torch.int64), lengths)
    )
    if comm.single:
        # One part per op, in op order, each op's pairs ascending and distinct: a stable sort
        # by value gives the (value, op) order, and within-op sums need no sort.
        running = torch.cumsum(counts, 0) - counts
        part = torch.repeat_interleave(torch.arange(len(passes)), lengths)
        part_totals = torch.stack([p.pair_counts.sum() for p in passes]) if passes else counts
        part_start = torch.cumsum(part_totals, 0) - part_totals
        within_unsorted = running - part_start[part]
        order = torch.sort(values, stable=True).indices
        pair_owner, pair_count, within = owner[order], counts[order], within_unsorted[order]
    else:
        # Sum the shards' pairs per (op, value), in (value, op) order: the tie rule between ops.
        order = _by_value_then_owner(values, owner)
        key_value, key_owner = values[order], owner[order]
        new = torch.ones(order.numel(), dtype=torch.bool)
        new[1:] = (key_value[1:] != key_value[:-1]) | (key_owner[1:] != key_owner[:-1])
        group = torch.cumsum(new, 0) - 1
        pair_owner = key_owner[new]
        pair_count = torch.zeros(int(new.sum()), dtype=torch.int64).index_add_(
            0, group, counts[order]
        )
        # Blocks of the same op before each pair.
        within = _exclusive_cumsum_by(pair_owner, pair_count, n_ops)
    before = below[pair_owner] + within
    lo_p, hi_p, size_p = lo[pair_owner], hi[pair_owner], size[pair_owner]
    counted = torch.clamp(before + pair_count, lo_p, hi_p) - torch.clamp(before, lo_p, hi_p)
    reached = start + torch.cumsum(counted * size_p, 0)
    if reached.numel() == 0 or int(reached[-1]) < target:
        return None  # the threshold lies at or above b
    cross = int(torch.searchsorted(reached, torch.tensor([target])))
    reached_before = int(reached[cross - 1]) if cross > 0 else start
    need = target - reached_before
    block = int(size_p[cross])
    blocks_needed = -(-need // block)
    overshoot = blocks_needed * block - need
    if overshoot > 0 and overshoot >= block - overshoot:
        blocks_needed -= 1  # dropping the last block lands nearer (or as near): fewer
    first_counted = max(int(before[cross]), int(lo_p[cross])) - int(before[cross])
    taken = torch.zeros(n_ops, dtype=torch.int64).index_add_(
        0, pair_owner[:cross], pair_count[:cross]
    )
    taken[int(pair_owner[cross])] += first_counted + blocks_needed
    op_counts = torch.clamp(below + taken, lo, hi)
    return op_counts, _verdicts(
        ops, passes, table, below, op_counts, values, counts, owner, offset, comm
    )


def _verdicts(
    ops: Sequence[FastOp],
    passes: Sequence[_Pass],
    table: _Table,
    below: Tensor,
    op_counts: Tensor,
    values: Tensor,
    counts: Tensor,
    owner: Tensor,
    offset: Tensor,
    comm: Comm,
) -> list[tuple[float | None, int] | None]:
    """Each local part's (tau, ties): the op's own threshold from its summed pairs, and the
    part's share of the ties at tau (shards in row order)."""
    verdicts: list[tuple[float | None, int] | None] = []
    if comm.single:  # each op is one part: its own pairs are the whole op's
        for op, found in zip(ops, passes, strict=True):
            i = int(table.position(torch.tensor([op.op])))
            take = int(op_counts[i]) - int(below[i])
            verdicts.append(_threshold(found.pair_values, found.pair_counts, take))
        return verdicts
    for op, found in zip(ops, passes, strict=True):
        i = int(table.position(torch.tensor([op.op])))
        mine = owner == i
        take = int(op_counts[i]) - int(below[i])
        merged_values, inverse = torch.unique(values[mine], sorted=True, return_inverse=True)
        merged_counts = torch.zeros(merged_values.numel(), dtype=torch.int64).index_add_(
            0, inverse, counts[mine]
        )
        verdict = _threshold(merged_values, merged_counts, take)
        if verdict is None or verdict[0] is None:
            verdicts.append(verdict)
            continue
        tau, ties = verdict
        at_tau = mine & (values == tau)
        earlier = int(counts[at_tau & (offset < op.offset)].sum())
        local = found.pair_counts[found.pair_values == tau]
        own = int(local.sum()) if local.numel() else 0
        verdicts.append((tau, max(0, min(ties - earlier, own))))
    return verdicts


def _exclusive_cumsum_by(group: Tensor, amount: Tensor, groups: int) -> Tensor:
    """For entries in sequence: the sum of ``amount`` over earlier entries of the same group."""
    order = torch.sort(group, stable=True).indices
    sorted_amount = amount[order]
    running = torch.cumsum(sorted_amount, 0) - sorted_amount
    totals = torch.zeros(groups, dtype=amount.dtype).index_add_(0, group, amount)
    starts = torch.cumsum(totals, 0) - totals
    result = torch.empty_like(amount)
    result[order] = running - starts[group[order]]
    return result


def _ids(ops: Sequence[FastOp]) -> Tensor:
    return torch.tensor([op.op for op in ops], dtype=torch.int64)


def _cat(tensors: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    return torch.cat(list(tensors)) if tensors else torch.zeros(0, dtype=dtype)


def _by_value_then_owner(values: Tensor, owner: Tensor) -> Tensor:
    """The order of entries by (value, owner): two stable sorts."""
    order = torch.sort(owner, stable=True).indices
    return order[torch.sort(values[order], stable=True).indices]
