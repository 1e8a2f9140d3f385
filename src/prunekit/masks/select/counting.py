"""The counting engine in one process: exact block selection near the memory-bandwidth floor.

Which blocks to remove is decided by a threshold on the block scores. A full sort, or one
``kthvalue`` over every score, costs far more than reading the scores once; here the
threshold is found in a few passes that only *compare and count*:

1. a stratified sample brackets the threshold (:mod:`~prunekit.masks.select.brackets`);
2. one counting pass per op (:mod:`~prunekit.masks.select.passes`) counts the blocks below
   its bracket, keeps the comparison above it and gathers the few candidates inside;
3. the candidates settle every op's exact count under its caps
   (:mod:`~prunekit.masks.select.solve`).

The answer never depends on the sample: a bracket that misses is detected and widened, and
the result is the exact selection of the reference (:mod:`~prunekit.masks.select.reference`):
ties to the earlier op, then the lower index; the total nearest to the target in whole
blocks, half-way to fewer. Extra memory is one or two bytes per block of the op being
counted, plus the candidates. Blocks must be of equal size within each op (every divisible
shape); the reference handles the rest. The multi-rank version is
:mod:`~prunekit.masks.select.multirank`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from prunekit.masks.limits import unreachable_target
from prunekit.masks.numeric import working_dtype
from prunekit.masks.select.brackets import WIDENINGS, Brackets, draw, estimate, make_brackets
from prunekit.masks.select.kernels import concat, order_by_value
from prunekit.masks.select.memory import release_freed_memory
from prunekit.masks.select.passes import (
    CountPass,
    Resolution,
    Scratch,
    count_pass,
    keep_all_but_lowest,
    retained_pass,
    worth_spreading,
)
from prunekit.masks.select.scored import OpTable, ScoredOp, numbered, op_rows
from prunekit.masks.select.solve import (
    Base,
    Missed,
    Solved,
    Walk,
    base_of,
    caps_free,
    cross,
    kth_counts,
    local_below,
)
from prunekit.masks.select.threads import map_ops

__all__ = ["global_plan", "keep_all_but_lowest", "local_keeps"]


def local_keeps(ops: Sequence[ScoredOp], counts: Sequence[int]) -> list[Tensor]:
    """Every op's keep mask when it removes its ``counts`` lowest blocks on its own. Block
    scores are computed first, one op at a time on this thread (they come from a pattern's
    hooks); the selections, prunekit's own code only, then run on all cores at once."""
    for op, k in zip(ops, counts, strict=True):
        if 0 < k < op.count:
            op.get()
    jobs = list(zip(ops, counts, strict=True))
    return map_ops(_keep_job, jobs, parallel=worth_spreading(ops))


def _keep_job(job: tuple[ScoredOp, int]) -> Tensor:
    op, k = job
    return Resolution(k).materialize(op)


def global_plan(
    ops: Sequence[ScoredOp],
    target: int,
    total: int | None = None,
    *,
    retain: bool = False,
    scratch: Scratch | None = None,
) -> list[Resolution]:
    """Each op's decision under global scope: ``target`` elements removed in all, lowest
    blocks first across ops (ties: earlier op, then lower index), each op within its
    ``[lo, hi]`` blocks, the total nearest to ``target`` in whole blocks (half-way: fewer).

    With ``retain=False`` no mask outlives its counting pass: only counts and (value,
    count) pairs are kept, and :meth:`Resolution.materialize` recomputes each mask when it
    is wanted, one op at a time (streaming)."""
    ops = numbered(ops)
    table = OpTable.from_rows(op_rows(ops))
    if table.reachable < target:
        raise unreachable_target(table.reachable, target, total or table.total)
    if table.floor >= target:
        return [Resolution(op.lo) for op in ops]
    if table.reachable == target:  # every op at its upper cap (N:M at N/M)
        return [Resolution(op.hi) for op in ops]
    scratch = scratch or Scratch()
    values, owners = draw(ops, int(table.blocks.sum()), release=not retain)
    found = estimate(values, owners, table, target)
    del values, owners
    for widen in range(WIDENINGS):
        brackets = make_brackets(found, table, widen)
        passes = _passes(ops, brackets, retain, scratch)
        outcome = _solve(passes, table, target, brackets)
        if isinstance(outcome, Missed):
            continue
        return [
            Resolution(int(k)) if verdict is None else p.resolution(int(k), verdict)
            for p, k, verdict in zip(passes, outcome.counts, outcome.verdicts, strict=True)
        ]
    raise AssertionError("unreachable: an open bracket holds every block")  # pragma: no cover


def _passes(
    ops: Sequence[ScoredOp], brackets: Brackets, retain: bool, scratch: Scratch
) -> list[CountPass]:
    """Every op's counting pass: all at once when each keeps its mask (spread over the
    cores), else one op's scores at a time."""
    if retain:
        jobs = [(op, brackets.low[i], brackets.high[i]) for i, op in enumerate(ops)]
        return map_ops(retained_pass, jobs, parallel=worth_spreading(ops))
    passes = []
    for i, op in enumerate(ops):
        low, high = brackets.low[i], brackets.high[i]
        passes.append(count_pass(op.get(), low, high, scratch, retain=False))
        release_freed_memory()  # this op's scores, before the next op's
    return passes


def _solve(
    passes: Sequence[CountPass], table: OpTable, target: int, brackets: Brackets
) -> Solved | Missed:
    """Exact counts and verdicts from one process's passes (op ``i`` is table row ``i``)."""
    where = range(len(passes))
    base = base_of(local_below(passes, where, brackets, len(passes)), table, brackets, target)
    if isinstance(base, Missed):
        return base
    if bool((table.size == table.size[0]).all()) and all(
        p.candidate_values is not None for p in passes
    ):
        inside = [_candidates_in(p, brackets, i) for i, p in enumerate(passes)]
        in_range = torch.tensor([w.numel() for w in inside], dtype=torch.int64)
        if caps_free(base, in_range, table):
            counts = kth_counts(inside, where, table, base, target)
            return counts if isinstance(counts, Missed) else _verdicts(passes, base, counts)
    counts = cross(_walk(passes, brackets, base, table), table, base, target)
    return counts if isinstance(counts, Missed) else _verdicts(passes, base, counts)


def _candidates_in(found: CountPass, brackets: Brackets, i: int) -> Tensor:
    """Op ``i``'s candidates in the global bracket (all of them unless it was bracketed
    apart or wider)."""
    values = found.candidate_values
    assert values is not None
    return values if brackets.shared[i] else values[brackets.holds(values)]


def _walk(passes: Sequence[CountPass], brackets: Brackets, base: Base, table: OpTable) -> Walk:
    """The pairs in ``[a, b)`` in (value, op) order. One part per op, in op order, each op's
    pairs ascending and distinct: a stable sort by value gives the (value, op) order, and
    the blocks of an op before each pair need no sort."""
    walked = [_pairs_in(p, brackets, i) for i, p in enumerate(passes)]
    dtype = working_dtype(v.dtype for v, _ in walked)
    values = concat([v.to(dtype) for v, _ in walked], dtype)
    counts = concat([c for _, c in walked], torch.int64)
    lengths = torch.tensor([c.numel() for _, c in walked], dtype=torch.int64)
    owner = torch.repeat_interleave(torch.arange(len(passes)), lengths)
    in_range = torch.zeros(len(passes), dtype=torch.int64).index_add_(0, owner, counts)
    order = order_by_value(values)
    within = None
    if not caps_free(base, in_range, table):
        running = torch.cumsum(counts, 0) - counts
        op_start = torch.cumsum(in_range, 0) - in_range
        within = (running - op_start[owner])[order]
    return Walk(owner[order], counts[order], within)


def _pairs_in(found: CountPass, brackets: Brackets, i: int) -> tuple[Tensor, Tensor]:
    """Op ``i``'s (value, count) pairs in the global bracket."""
    if brackets.shared[i]:
        return found.pair_values, found.pair_counts
    inside = brackets.holds(found.pair_values)
    return found.pair_values[inside], found.pair_counts[inside]


def _verdicts(passes: Sequence[CountPass], base: Base, counts: Tensor) -> Solved:
    """Each op's verdict: its own candidates settle its threshold (one part per op)."""
    takes = (counts - base.below).tolist()
    return Solved(counts, [p.verdict(int(t)) for p, t in zip(passes, takes, strict=True)])
