"""Exact block selection by counting, near the memory-bandwidth floor.

Which blocks to remove is decided by a threshold on the block scores. A full sort, or one
``kthvalue`` over every score, costs far more than reading the scores once; here the
threshold is found in a few passes that only *compare and count*:

1. a stratified **sample** of the scores (a few hundred thousand values) estimates where
   the threshold lies, caps included, and gives a narrow **bracket** ``[a, b)`` around it;
   an op that a cap holds away from the threshold gets a bracket around its own cap-th
   score instead;
2. one **pass** per op counts the blocks below its bracket, keeps the comparison ``>= b``
   (the bulk of the mask) and gathers the few **candidates** in the bracket;
3. the candidates settle the exact count of every op under its caps: each op removes its
   blocks below a threshold score ``tau`` plus its first ``t`` blocks (by index) scoring
   exactly ``tau``. When no cap binds inside the bracket, ``tau`` is the k-th lowest
   candidate (a selection); otherwise the candidates, summed up as (score, count) pairs
   per op (a handful when scores are bf16 and tie in large groups), are walked in (score,
   op) order with every op's caps applied.

The answer never depends on the sample: a bracket that misses the threshold (rare) is
detected by the exact counts and widened, and the result is the same exact selection as
the reference in :mod:`prunekit.patterns.selection` (ties to the earlier op, then the lower
index; the total nearest to the target in whole blocks, half-way to fewer). Extra memory is
one or two bytes per block of the op being counted, plus the candidates. The sorts,
selections and counts on CPU go through numpy (:mod:`prunekit.patterns.hostops`).

This path handles blocks of equal size within each op (every divisible shape); layouts with
partial edge blocks use the radix search in :mod:`prunekit.patterns.selection`.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor

from prunekit._memory import release_freed_memory
from prunekit.errors import ImpossibleTargetError
from prunekit.patterns.hostops import (
    count_true,
    greater_equal,
    kth_smallest,
    map_ops,
    order_by_value,
    rank_bracket,
    sorted_values,
    value_pairs,
)

# Sample sizes: a bracket of +-MARGIN_SIGMAS standard deviations of the sample quantile holds
# the threshold with overwhelming probability and about 10/sqrt(S) of the blocks.
GLOBAL_SAMPLE = 1 << 18
LOCAL_SAMPLE = 1 << 14
MARGIN_SIGMAS = 5.0
# A bracket that misses is widened 8x, then 64x, then opened: the answer stays exact.
_WIDENINGS = 4


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
    device: torch.device | None = None  # where the scores live, when ``values`` is a function

    def __post_init__(self) -> None:
        if self.count < 0:
            if callable(self.values):
                raise ValueError("FastOp: give count when values is a function")
            self.count = self.values.numel()
        if self.device is None and not callable(self.values):
            self.device = self.values.device
        if self.whole < 0:
            self.whole = self.count

    def get(self) -> Tensor:
        """The block scores (computed now if ``values`` is a function)."""
        return self.values() if callable(self.values) else self.values

    def where(self) -> torch.device:
        """The scores' device (read from the scores when not given)."""
        return self.device if self.device is not None else self.get().device


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
        if self.tau is None and (self.k <= 0 or self.k >= op.count) and op.whole == op.count:
            return torch.full((op.count,), self.k <= 0, dtype=torch.bool, device=op.where())
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
    """What one counting pass learned about one op part for a bracket ``[a, b)``: the
    blocks below ``a``, the candidates in ``[a, b)`` and, when retained, the mask of those
    at or above ``b``. Without retention only the candidates' (value, count) pairs are kept
    (a handful when scores are bf16 and tie in large groups)."""

    below: int  # blocks with value < a
    candidate_values: Tensor | None = None  # values in [a, b), in index order
    kept: Tensor | None = None  # value >= b, when retained
    candidates: Tensor | None = None  # indices of the blocks in [a, b), when retained
    pairs: tuple[Tensor, Tensor] | None = None

    @property
    def pair_values(self) -> Tensor:
        """The distinct candidate values, ascending (float32, or float64)."""
        return self._pairs()[0]

    @property
    def pair_counts(self) -> Tensor:
        """How many candidates have each of :attr:`pair_values`."""
        return self._pairs()[1]

    def _pairs(self) -> tuple[Tensor, Tensor]:
        if self.pairs is None:
            assert self.candidate_values is not None
            self.pairs = value_pairs(self.candidate_values)
        return self.pairs

    @property
    def count(self) -> int:
        """How many candidates."""
        if self.candidate_values is not None:
            return self.candidate_values.numel()
        return int(self.pair_counts.sum())

    def count_below(self, value: float) -> int:
        """How many candidates score below ``value``."""
        if self.candidate_values is not None:
            return count_true(self.candidate_values < value)
        return int(self.pair_counts[self.pair_values < value].sum())

    def verdict(self, take: int) -> tuple[float | None, int] | None:
        """(tau, ties) that remove ``take`` candidates, lowest first (see :func:`_threshold`)."""
        if self.candidate_values is None or take <= 0 or take > self.count:
            return _threshold(self.pair_values, self.pair_counts, take)
        tau = kth_smallest(self.candidate_values, take)
        return tau, take - self.count_below(tau)


class _Scratch:
    """Reused work buffers, so that no pass allocates (and page-faults) a full-size tensor
    besides the mask it returns. Sized for the largest op seen, padded to 8 bytes; ``slot``
    1 holds a streaming pass's ``>= b`` comparison, which no one keeps."""

    def __init__(self) -> None:
        self.raw = [torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.uint8)]

    def get(self, n: int, device: torch.device, slot: int = 0) -> Tensor:
        padded = -(-n // 8) * 8
        if self.raw[slot].numel() < padded or self.raw[slot].device != device:
            self.raw[slot] = torch.empty(padded, dtype=torch.uint8, device=device)
        return self.raw[slot][:padded]


_scratches = threading.local()


def _thread_scratch() -> _Scratch:
    """This thread's work buffers (passes of different ops may run on different threads)."""
    scratch: _Scratch | None = getattr(_scratches, "scratch", None)
    if scratch is None:
        scratch = _scratches.scratch = _Scratch()
    return scratch


def _retained_pass(job: tuple[FastOp, float | None, float | None]) -> _Pass:
    """One op's counting pass for its bracket, its mask kept (:func:`map_ops` work)."""
    op, a, b = job
    return _count_pass(op.get(), a, b, _thread_scratch())


# Blocks per op, on average, from which ops are spread over threads.
_SPREAD_FROM = 1 << 16


def worth_spreading(ops: Sequence[FastOp]) -> bool:
    """Whether the ops' passes or selections run on all cores at once (:func:`map_ops`):
    every op's scores on the CPU, and ops large enough that threads pay (small ops, such
    as whole channels, finish faster one by one)."""
    on_host = all(op.device is None or op.device.type == "cpu" for op in ops)
    return on_host and sum(op.count for op in ops) >= _SPREAD_FROM * len(ops)


def _count_pass(
    values: Tensor, a: float | None, b: float | None, scratch: _Scratch, *, retain: bool = True
) -> _Pass:
    """One look at every block: how many lie below ``a``, which lie at or above ``b`` and
    which in between (summed up as (value, count) pairs)."""
    values = values.reshape(-1)
    n = values.numel()
    raw = scratch.get(n, values.device)
    flags = raw[:n]  # uint8 0/1: comparisons into bytes run about twice as fast as into bools
    if b is None:
        keep = torch.zeros(n, dtype=torch.bool, device=values.device)
    elif retain:
        keep = greater_equal(values, b)
    else:  # only the counts and pairs outlive the pass: compare into a reused buffer
        keep = greater_equal(values, b, out=scratch.get(n, values.device, slot=1)[:n])
        keep = keep.view(torch.bool)
    if a is None:
        flags.fill_(1)
        below = 0
    else:
        greater_equal(values, a, out=flags)
        below = n - count_true(flags)
    flags.sub_(keep.view(torch.uint8))  # at or above a, but not kept: a candidate (keep <= it)
    raw[n:] = 0
    candidates = _sparse_nonzero(raw)
    candidate_values = values[candidates]
    if not retain:
        return _Pass(below, pairs=value_pairs(candidate_values))
    return _Pass(below, candidate_values, keep, candidates)


def _sparse_nonzero(raw: Tensor) -> Tensor:
    """Indices of the nonzero bytes of a padded uint8 buffer, ascending, when few are set:
    ``nonzero`` over 8-byte words first (8x fewer elements), then within the hit words."""
    words = raw.view(torch.int64)
    hit = torch.nonzero(words).squeeze(1)
    if hit.numel() == 0:
        return hit
    inside = torch.nonzero(raw.view(-1, 8)[hit])
    return hit[inside[:, 0]] * 8 + inside[:, 1]


_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
# Sample indices are cached per (blocks, samples) up to this many samples (ops of one shape
# share them: BERT's q, k, v and o).
_CACHED_STRATA = 1 << 18


def _sample(values: Tensor, count: int) -> Tensor:
    """``count`` values, as float64 on the CPU (where all the bookkeeping happens, whatever
    the scores' device): one from each of ``count`` equal strata of the blocks.
    A stratified sample estimates a quantile at least as well as independent draws (the
    bracket's margin assumes the latter), and its ascending indices read memory in order,
    several times faster than scattered ones."""
    n = values.numel()
    if n <= count:
        return values.reshape(-1).to("cpu", torch.float64)
    index = _strata(n, count) if count <= _CACHED_STRATA else _strata.__wrapped__(n, count)
    return values.reshape(-1)[index.to(values.device)].to("cpu", torch.float64)


@functools.lru_cache(maxsize=64)
def _strata(n: int, count: int) -> Tensor:
    """One index in each of ``count`` equal strata of ``range(n)``, ascending. The offsets
    within the strata step by the golden ratio (mod 1) from a start set by ``n``: a
    low-discrepancy sequence, each offset uniform over its stratum, with no random number
    drawn per sample and the same indices for the same sizes (deterministic masks)."""
    strata = torch.arange(count, dtype=torch.float64)
    offsets = torch.frac(strata * _GOLDEN + (n * _GOLDEN) % 1.0)
    return ((strata + offsets) * (n / count)).to(torch.int64).clamp_(max=n - 1)


def _bracket(
    sample: Tensor, position: float, widen: int = 0, *, ordered: bool = True
) -> tuple[float | None, float | None]:
    """Sample values ``MARGIN_SIGMAS * 8**widen`` standard deviations of rank around
    ``position``. The bracket ``[a, b)`` holds whole tie groups: ``a`` is a sample value and
    ``b`` the next larger sample value, so a value shared by many blocks (bf16 scores) is
    never split by the bracket's upper end. ``ordered=False``: the sample is not sorted,
    and the two ranks are found by selection."""
    if widen >= _WIDENINGS - 1:
        return None, None  # the last resort: every block is a candidate
    size = sample.numel()
    q = min(max(position / max(size, 1), 0.0), 1.0)
    margin = MARGIN_SIGMAS * 8**widen * math.sqrt(size * q * (1 - q) + 1.0) + 2
    low, high = math.floor(position - margin), math.ceil(position + margin)
    if not ordered:
        return rank_bracket(sample, low if low > 0 else None, high if high < size else None)
    a = float(sample[low]) if low > 0 else None
    b = None
    if high < size:
        above = int(torch.searchsorted(sample, sample[high : high + 1], right=True))
        b = float(sample[above]) if above < size else None
    return a, b


def keep_all_but_lowest(values: Tensor, k: int, *, scratch: _Scratch | None = None) -> Tensor:
    """Bool per block, True = keep: every block but the ``k`` lowest (ties: lower index)."""
    n = values.numel()
    if k <= 0:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    if k >= n:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    scratch = scratch or _Scratch()
    sample = _sample(values, _local_sample(n))
    position = k / n * sample.numel()
    for widen in range(_WIDENINGS):
        a, b = _bracket(sample, position, widen, ordered=False)
        found = _count_pass(values, a, b, scratch)
        verdict = found.verdict(k - found.below)
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


def _local_sample(blocks: int) -> int:
    """Samples for one op's bracket: LOCAL_SAMPLE up to 2^18 blocks, then growing as
    blocks^(2/3), which balances drawing the sample against handling the candidates
    (about 10 / sqrt(samples) of the blocks): 28K samples for 0.6M blocks, 70K for 2.4M."""
    growth: float = max(1.0, blocks / (1 << 18)) ** (2 / 3)
    return round(LOCAL_SAMPLE * growth)


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


def lowest_k(values: Tensor, k: int) -> Tensor:
    """Bool per block: True for the ``k`` lowest values, ties to the lower index."""
    return ~keep_all_but_lowest(values, k)


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
    if reachable == target:  # every op at its upper cap (N:M at N/M)
        return _per_op_plans(ops, table, table.hi, retain, scratch, comm)
    estimate = _global_estimate(ops, table, target, comm, release=not retain)
    for widen in range(_WIDENINGS):
        brackets = _brackets(estimate, table, widen)
        where = table.position(_ids(ops)).tolist()
        if retain:  # every op's pass at once (each keeps its mask): spread over the cores
            jobs = [
                (op, brackets.low[i], brackets.high[i]) for op, i in zip(ops, where, strict=True)
            ]
            passes = map_ops(_retained_pass, jobs, parallel=worth_spreading(ops))
        else:  # one op's scores at a time
            passes = []
            for op, i in zip(ops, where, strict=True):
                passes.append(
                    _count_pass(op.get(), brackets.low[i], brackets.high[i], scratch, retain=False)
                )
                release_freed_memory()  # this op's scores, before the next op's
        outcome = _solve_pairs(ops, passes, table, target, comm, brackets)
        if outcome is None:
            continue
        counts, verdicts = outcome
        plans: list[Resolution] = []
        outside = torch.zeros(table.ids.numel(), dtype=torch.bool)
        for found, verdict, i in zip(passes, verdicts, where, strict=True):
            if verdict is None:
                outside[i] = True
                plans.append(Resolution(int(counts[i])))
                continue
            tau, ties = verdict
            floor = brackets.low[i]
            plans.append(
                Resolution(
                    int(counts[i]),
                    (floor if floor is not None else -math.inf) if tau is None else tau,
                    ties,
                    found.kept,
                    found.candidates,
                    found.candidate_values,
                )
            )
        outside = comm.sum(outside.to(torch.int64)) > 0
        if bool(outside.any()):  # ops whose own threshold lies outside their bracket
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


@dataclass
class _Estimate:
    """Where the sample says the threshold lies (identical on every rank)."""

    merged: Tensor  # every op's sampled scores, ascending (float64)
    position: float  # where in ``merged`` the estimated capped total reaches the target
    samples: list[Tensor]  # each op's sampled scores, ascending (table order)
    weight: Tensor  # blocks each of an op's samples stands for
    guess: Tensor  # blocks each op would remove at the estimated threshold, caps ignored


def _global_estimate(
    ops: Sequence[FastOp], table: _Table, target: int, comm: Comm, *, release: bool = False
) -> _Estimate:
    """A sample of every op's scores (``blocks / samples`` blocks per sample) and the point
    in their merged order where the estimated capped total reaches ``target``: each sample,
    in ascending order, adds its op's capped increment, so one sort and one cumulative sum
    give the estimate at every point. The extra memory is a few times the sample (tens of
    MB for the 4M samples of a 7B model), whatever the model's size."""
    blocks = int(table.blocks.sum())
    wanted = _global_sample(blocks)
    drawn = []
    for op in ops:
        drawn.append(_sample(op.get(), max(1, round(wanted * op.count / blocks))))
        if release:
            release_freed_memory()  # scores computed on demand: this op's, before the next
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
    del drawn
    n_ops = table.ids.numel()
    owner = table.position(owners)
    del owners
    if owner.numel() > 1 and bool((owner[1:] < owner[:-1]).any()):
        by_op = torch.sort(owner, stable=True).indices
        values, owner = values[by_op], owner[by_op]
    per_op = torch.bincount(owner, minlength=n_ops)
    if bool((values.to(torch.float32).to(torch.float64) == values).all()):
        values = values.to(torch.float32)  # exact (scores of 32 bits or fewer): half the memory
    samples = [sorted_values(part) for part in torch.split(values, per_op.tolist())]
    grouped = _cat(samples, values.dtype)
    del values
    order = order_by_value(grouped)  # equal values: the lower op first
    merged = grouped[order]
    del grouped
    starts = torch.cumsum(per_op, 0) - per_op
    narrow = torch.int32 if merged.numel() < (1 << 31) else torch.int64
    rank = torch.arange(1, merged.numel() + 1, dtype=narrow).sub_(starts[owner].to(narrow))[order]
    owner = owner.to(narrow)[order]
    del order
    weight = table.blocks.to(torch.float64) / per_op.clamp(min=1)
    reached = _estimated_totals(owner, rank, weight, table)
    del rank
    position = int(torch.searchsorted(reached, torch.tensor([float(target)], dtype=torch.float64)))
    position = min(position, merged.numel() - 1)
    guess = torch.bincount(owner[:position], minlength=n_ops).to(torch.float64) * weight
    return _Estimate(merged, float(position), samples, weight, guess)


def _estimated_totals(owner: Tensor, rank: Tensor, weight: Tensor, table: _Table) -> Tensor:
    """For the merged samples in order, the estimated capped total removed up to and
    including each: every sample adds its op's capped increment ``size * (clamp(r * w) -
    clamp((r - 1) * w))`` for its rank ``r`` within its op. Computed in chunks so that the
    temporaries stay a few MB on a billion-weight model's 4M samples."""
    lo, hi = table.lo.to(torch.float64), table.hi.to(torch.float64)
    size = table.size.to(torch.float64)
    steps = torch.empty(owner.numel(), dtype=torch.float64)
    chunk = 1 << 20
    for first in range(0, owner.numel(), chunk):
        part = owner[first : first + chunk].to(torch.int64)
        r = rank[first : first + chunk].to(torch.float64)
        w, low, high = weight[part], lo[part], hi[part]
        upper = torch.clamp(r * w, low, high)
        lower = torch.clamp(r.sub_(1).mul_(w), low, high)
        steps[first : first + chunk] = upper.sub_(lower).mul_(size[part])
    return torch.cumsum(steps, 0, out=steps).add_(float((size * lo).sum()))


@dataclass
class _Brackets:
    """The global bracket ``[a, b)`` (None: open) and each op's own (table order).

    An op whose estimated count is held by a cap is bracketed around its own cap-th score
    instead: when that bracket lies wholly below ``a`` (or above ``b``), the op is
    *saturated* over the global bracket and one pass settles both its count and its mask;
    when the two overlap, the op gets their hull."""

    a: float | None
    b: float | None
    low: list[float | None]
    high: list[float | None]


def _brackets(estimate: _Estimate, table: _Table, widen: int) -> _Brackets:
    a, b = _bracket(estimate.merged, estimate.position, widen)
    low: list[float | None] = []
    high: list[float | None] = []
    guesses, weights = estimate.guess.tolist(), estimate.weight.tolist()
    for i, (guess, weight) in enumerate(zip(guesses, weights, strict=True)):
        lo, hi = int(table.lo[i]), int(table.hi[i])
        cap = hi if guess > hi else lo if guess < lo else None
        if cap is None:
            low.append(a)
            high.append(b)
            continue
        own_a, own_b = _bracket(estimate.samples[i], cap / weight, widen)
        wholly_below = cap == hi and own_b is not None and a is not None and own_b <= a
        wholly_above = cap == lo and own_a is not None and b is not None and own_a >= b
        if wholly_below or wholly_above:
            low.append(own_a)
            high.append(own_b)
        else:  # the hull of both
            low.append(None if own_a is None or a is None else min(own_a, a))
            high.append(None if own_b is None or b is None else max(own_b, b))
    return _Brackets(a, b, low, high)


def _solve_pairs(
    ops: Sequence[FastOp],
    passes: Sequence[_Pass],
    table: _Table,
    target: int,
    comm: Comm,
    brackets: _Brackets,
) -> tuple[Tensor, list[tuple[float | None, int] | None]] | None:
    """Exact per-op counts (table order) and each local part's (tau, ties) verdict (None:
    outside its bracket), from every part's pairs; None if a bracket missed.

    The threshold is sought in the global bracket ``[a, b)``: every op's count below ``a``
    (its blocks below its own bracket and its pairs below ``a``), then the pairs in
    ``[a, b)`` in (value, op) order. An op bracketed apart must be saturated there: all its
    pairs lie below ``a`` and reach its upper cap, or above ``b`` with its count below them
    within its lower cap; else the bracket missed."""
    n_ops = table.ids.numel()
    a = brackets.a if brackets.a is not None else -math.inf
    b = brackets.b if brackets.b is not None else math.inf
    position = table.position(_ids(ops))
    under_a = torch.tensor(
        [
            0 if _global_bracket(brackets, i) else p.count_below(a)
            for p, i in zip(passes, position.tolist(), strict=True)
        ],
        dtype=torch.int64,
    )
    own_below = torch.tensor([p.below for p in passes], dtype=torch.int64)
    local = torch.zeros(2, n_ops, dtype=torch.int64)
    local[0].index_add_(0, position, own_below)
    local[1].index_add_(0, position, under_a)
    summed = comm.sum(local.reshape(-1)).reshape(2, n_ops)
    below, below_a = summed[0], summed[0] + summed[1]
    lo, hi, size = table.lo, table.hi, table.size
    high = torch.tensor([math.inf if h is None else h for h in brackets.high], dtype=torch.float64)
    low = torch.tensor([-math.inf if v is None else v for v in brackets.low], dtype=torch.float64)
    apart_below, apart_above = high <= a, low >= b
    if bool((below_a[apart_below] < hi[apart_below]).any()):
        return None  # an op bracketed below a does not reach its upper cap there
    if bool((below[apart_above] > lo[apart_above]).any()):
        return None  # an op bracketed above b removes more than its lower cap below b
    start = int((size * torch.clamp(below_a, lo, hi)).sum())
    if start >= target:
        return None  # the threshold lies below a
    where = position.tolist()
    one_size = bool((size == size[0]).all()) if size.numel() else True
    if comm.single and one_size and all(p.candidate_values is not None for p in passes):
        solved = _solve_by_kth(passes, where, table, target, brackets, below, below_a, start)
        if solved is not False:
            return solved
    if comm.single:
        values = counts = owner = offset = torch.zeros(0)  # _verdicts reads each pass's own
        walked = [_in_walk(p, brackets, i, a, b) for p, i in zip(passes, where, strict=True)]
        dtype = _pair_dtype([v for v, _ in walked])
        walk_values = _cat([v.to(dtype) for v, _ in walked], dtype)
        walk_counts = _cat([c for _, c in walked], torch.int64)
        walk_owner = torch.repeat_interleave(
            position, torch.tensor([c.numel() for _, c in walked], dtype=torch.int64)
        )
    else:
        lengths = torch.tensor([p.pair_values.numel() for p in passes], dtype=torch.int64)
        values, _ = comm.gather(
            _cat([p.pair_values.to(torch.float64) for p in passes], torch.float64)
        )
        counts, _ = comm.gather(_cat([p.pair_counts for p in passes], torch.int64))
        owner, _ = comm.gather(torch.repeat_interleave(position, lengths))
        offset, _ = comm.gather(
            torch.repeat_interleave(
                torch.tensor([op.offset for op in ops], dtype=torch.int64), lengths
            )
        )
        inside = (values >= a) & (values < b)
        walk_values, walk_counts, walk_owner = values[inside], counts[inside], owner[inside]
    in_range = torch.zeros(n_ops, dtype=torch.int64).index_add_(0, walk_owner, walk_counts)
    free = _caps_free(below_a, in_range, lo, hi)  # then every pair counts in full
    within: Tensor | None = None
    if comm.single:
        # One part per op, in op order, each op's pairs ascending and distinct: a stable sort
        # by value gives the (value, op) order, and within-op sums need no sort.
        order = order_by_value(walk_values)
        pair_owner, pair_count = walk_owner[order], walk_counts[order]
        if not free:
            running = torch.cumsum(walk_counts, 0) - walk_counts
            op_start = torch.cumsum(in_range, 0) - in_range
            within = (running - op_start[walk_owner])[order]
    else:
        # Sum the shards' pairs per (op, value), in (value, op) order: the tie rule between ops.
        order = _by_value_then_owner(walk_values, walk_owner)
        key_value, key_owner = walk_values[order], walk_owner[order]
        new = torch.ones(order.numel(), dtype=torch.bool)
        new[1:] = (key_value[1:] != key_value[:-1]) | (key_owner[1:] != key_owner[:-1])
        group = torch.cumsum(new, 0) - 1
        pair_owner = key_owner[new]
        pair_count = torch.zeros(int(new.sum()), dtype=torch.int64).index_add_(
            0, group, walk_counts[order]
        )
        if not free:  # blocks of the same op before each pair
            within = _exclusive_cumsum_by(pair_owner, pair_count, n_ops)
    size_p = size[:1] if one_size else size[pair_owner]
    if within is None:
        counted = pair_count
    else:
        before = below_a[pair_owner] + within
        lo_p, hi_p = lo[pair_owner], hi[pair_owner]
        counted = torch.clamp(before + pair_count, lo_p, hi_p) - torch.clamp(before, lo_p, hi_p)
    reached = start + torch.cumsum(counted * size_p, 0)
    if reached.numel() == 0 or int(reached[-1]) < target:
        return None  # the threshold lies at or above b
    cross = int(torch.searchsorted(reached, torch.tensor([target])))
    reached_before = int(reached[cross - 1]) if cross > 0 else start
    need = target - reached_before
    crossing_op = int(pair_owner[cross])
    block = int(size[crossing_op])
    blocks_needed = _whole_blocks(need, block)
    first_counted = 0  # blocks the op's lower cap took before this pair (none when free)
    if within is not None:
        before_cross = int(below_a[crossing_op]) + int(within[cross])
        first_counted = max(before_cross, int(lo[crossing_op])) - before_cross
    taken = torch.zeros(n_ops, dtype=torch.int64).index_add_(
        0, pair_owner[:cross], pair_count[:cross]
    )
    taken[crossing_op] += first_counted + blocks_needed
    op_counts = torch.clamp(below_a + taken, lo, hi)
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
    if comm.single:  # each op is one part: its own candidates are the whole op's
        for op, found in zip(ops, passes, strict=True):
            i = int(table.position(torch.tensor([op.op])))
            verdicts.append(found.verdict(int(op_counts[i]) - int(below[i])))
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


def _whole_blocks(need: int, block: int) -> int:
    """How many blocks of ``block`` elements land nearest to ``need`` elements when the
    last one may overshoot: the ceiling, one fewer when that is as near or nearer."""
    blocks = -(-need // block)
    overshoot = blocks * block - need
    if overshoot > 0 and overshoot >= block - overshoot:
        blocks -= 1
    return blocks


def _caps_free(below_a: Tensor, in_range: Tensor, lo: Tensor, hi: Tensor) -> bool:
    """Whether no op's cap binds inside the global bracket: every op with candidates there
    starts at or above its lower cap and, taking them all, stays within its upper cap."""
    walked = in_range > 0
    return bool(((below_a >= lo) & (below_a + in_range <= hi))[walked].all())


def _global_bracket(brackets: _Brackets, i: int) -> bool:
    """Whether op ``i`` was bracketed by the global ``[a, b)`` itself."""
    return brackets.low[i] is brackets.a and brackets.high[i] is brackets.b


def _solve_by_kth(
    passes: Sequence[_Pass],
    where: list[int],
    table: _Table,
    target: int,
    brackets: _Brackets,
    below: Tensor,
    below_a: Tensor,
    start: int,
) -> tuple[Tensor, list[tuple[float | None, int] | None]] | Literal[False] | None:
    """:func:`_solve_pairs` in one process when every block has the same size and no cap
    binds inside ``[a, b)`` (the usual case): the threshold is then the k-th lowest of the
    candidates in the bracket (a selection, no sort), ties going to the earlier op. False
    when a cap binds there: the pairs' walk handles it."""
    a = brackets.a if brackets.a is not None else -math.inf
    b = brackets.b if brackets.b is not None else math.inf
    walk: list[Tensor] = []
    for found, i in zip(passes, where, strict=True):
        values = found.candidate_values
        assert values is not None
        if not _global_bracket(brackets, i):
            values = values[(values >= a) & (values < b)]
        walk.append(values)
    n_ops = table.ids.numel()
    position = torch.tensor(where, dtype=torch.int64)
    in_range = torch.zeros(n_ops, dtype=torch.int64).index_add_(
        0, position, torch.tensor([w.numel() for w in walk], dtype=torch.int64)
    )
    lo, hi = table.lo, table.hi
    if not _caps_free(below_a, in_range, lo, hi):
        return False
    block = int(table.size[0])
    need = target - start
    if start + int(in_range.sum()) * block < target:
        return None  # the threshold lies at or above b
    take = _whole_blocks(need, block)
    taken = torch.zeros(n_ops, dtype=torch.int64)
    if take > 0:
        dtype = _pair_dtype(walk)
        tau = kth_smallest(_cat([w.to(dtype) for w in walk], dtype), take)
        lower = torch.tensor([count_true(w < tau) for w in walk], dtype=torch.int64)
        tied = torch.tensor([count_true(w == tau) for w in walk], dtype=torch.int64)
        left = take - int(lower.sum())  # blocks at tau, to the earlier ops first
        before = torch.cumsum(tied, 0) - tied
        at_tau = torch.clamp(left - before, min=0).minimum(tied)
        taken.index_add_(0, position, lower + at_tau)
    op_counts = torch.clamp(below_a + taken, lo, hi)
    verdicts = [
        found.verdict(int(op_counts[i]) - int(below[i]))
        for found, i in zip(passes, where, strict=True)
    ]
    return op_counts, verdicts


def _in_walk(
    found: _Pass, brackets: _Brackets, i: int, a: float, b: float
) -> tuple[Tensor, Tensor]:
    """A pass's pairs in the global bracket ``[a, b)``: all of them unless op ``i`` was
    bracketed apart or wider."""
    if _global_bracket(brackets, i):
        return found.pair_values, found.pair_counts
    inside = (found.pair_values >= a) & (found.pair_values < b)
    return found.pair_values[inside], found.pair_counts[inside]


def _pair_dtype(values: Sequence[Tensor]) -> torch.dtype:
    """float32 unless some op's scores are float64: pairs compare and sort faster narrow."""
    return torch.float64 if any(v.dtype == torch.float64 for v in values) else torch.float32


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
