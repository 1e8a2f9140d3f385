"""The counting engine across ranks: the same exact global selection, over ops spread out.

Each rank holds some op parts (whole ops, or row shards of them, see
:class:`~prunekit.masks.select.scored.ScoredOp`) and calls :func:`global_plan` with the same
target; ranks exchange counts, a sample of scores and the candidates' (value, count) pairs,
never weights, through a :class:`Comm`. The steps are those of the single-process engine
(:mod:`~prunekit.masks.select.counting`): sample, brackets, one counting pass per part, the
exact counts from the pairs (:mod:`~prunekit.masks.select.solve`); what differs is that every
count and pair is summed or gathered over the ranks, and that an op split across ranks
shares the ties at its threshold in row order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import torch
from torch import Tensor

from prunekit.masks.limits import unreachable_target
from prunekit.masks.select.brackets import WIDENINGS, Brackets, draw, estimate, make_brackets
from prunekit.masks.select.kernels import concat
from prunekit.masks.select.memory import release_freed_memory
from prunekit.masks.select.passes import (
    CountPass,
    Resolution,
    Scratch,
    Verdict,
    count_pass,
    retained_pass,
    threshold,
    worth_spreading,
)
from prunekit.masks.select.scored import OpTable, ScoredOp, op_rows
from prunekit.masks.select.solve import (
    Base,
    Missed,
    Solved,
    Walk,
    base_of,
    caps_free,
    cross,
    local_below,
)
from prunekit.masks.select.threads import map_ops


class Comm(Protocol):
    """How ranks exchange what the selection needs (gloo on CPU, NCCL on GPU...)."""

    def sum(self, tensor: Tensor) -> Tensor:
        """Elementwise sum over ranks (a CPU tensor)."""
        ...

    def gather(self, tensor: Tensor) -> tuple[Tensor, list[int]]:
        """Every rank's 1-D ``tensor`` concatenated in rank order (a CPU tensor), and
        their lengths."""
        ...


def global_plan(
    ops: Sequence[ScoredOp],
    target: int,
    comm: Comm,
    *,
    retain: bool = True,
    scratch: Scratch | None = None,
) -> list[Resolution]:
    """This rank's parts' decisions under global scope: the selection one process would
    make on the whole model (see :func:`prunekit.masks.select.counting.global_plan`).
    Every rank calls this with the same ``target``; ``op`` ids order the ops."""
    table = _gathered_table(ops, comm)
    if table.reachable < target:
        raise unreachable_target(table.reachable, target, table.total)
    scratch = scratch or Scratch()
    if table.floor >= target:
        return _every_op_alone(ops, table, table.lo, retain, scratch, comm)
    if table.reachable == target:  # every op at its upper cap (N:M at N/M)
        return _every_op_alone(ops, table, table.hi, retain, scratch, comm)
    values, owners = draw(ops, int(table.blocks.sum()), release=not retain)
    found = estimate(comm.gather(values)[0], comm.gather(owners)[0], table, target)
    del values, owners
    where = table.position(torch.tensor([op.op for op in ops], dtype=torch.int64)).tolist()
    for widen in range(WIDENINGS):
        brackets = make_brackets(found, table, widen)
        passes = _passes(ops, where, brackets, retain, scratch)
        outcome = _solve(ops, where, passes, table, target, brackets, comm)
        if isinstance(outcome, Missed):
            continue
        plans: list[Resolution] = []
        outside = torch.zeros(table.ids.numel(), dtype=torch.bool)
        for p, verdict, i in zip(passes, outcome.verdicts, where, strict=True):
            k = int(outcome.counts[i])
            outside[i] |= verdict is None
            plans.append(Resolution(k) if verdict is None else p.resolution(k, verdict))
        alone = comm.sum(outside.to(torch.int64)) > 0
        if bool(alone.any()):  # ops whose own threshold lies outside their bracket
            redone = _each_alone(ops, table, outcome.counts, retain, scratch, comm, alone)
            plans = [r if r is not None else p for p, r in zip(plans, redone, strict=True)]
        return plans
    raise AssertionError("unreachable: an open bracket holds every block")  # pragma: no cover


def _gathered_table(ops: Sequence[ScoredOp], comm: Comm) -> OpTable:
    """Every rank's op rows, one per op id, in id order."""
    gathered, _ = comm.gather(op_rows(ops).reshape(-1))
    rows = gathered.reshape(-1, 5)
    unique, inverse = torch.unique(rows[:, 0], sorted=True, return_inverse=True)
    first = torch.full((unique.numel(),), rows.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(rows.shape[0]), reduce="amin")
    return OpTable.from_rows(rows[first])


def _every_op_alone(
    ops: Sequence[ScoredOp],
    table: OpTable,
    counts: Tensor,
    retain: bool,
    scratch: Scratch,
    comm: Comm,
) -> list[Resolution]:
    """:func:`_each_alone` for every op (each part then has its decision)."""
    plans = _each_alone(ops, table, counts, retain, scratch, comm)
    return [plan if plan is not None else Resolution(0) for plan in plans]


def _each_alone(
    ops: Sequence[ScoredOp],
    table: OpTable,
    counts: Tensor,
    retain: bool,
    scratch: Scratch,
    comm: Comm,
    which: Tensor | None = None,
) -> list[Resolution | None]:
    """Each chosen op on its own: its ``counts`` lowest blocks, found across its parts. One
    op at a time, on every rank in the same order, so that an op split across ranks agrees
    on its threshold (a rank holding no part of it still takes part)."""
    plans: list[Resolution | None] = [None] * len(ops)
    chosen = range(table.ids.numel()) if which is None else torch.nonzero(which).flatten().tolist()
    for i in chosen:
        op_id, k = int(table.ids[i]), int(counts[i])
        mine = [j for j, op in enumerate(ops) if op.op == op_id]
        blocks = int(table.blocks[i])
        parts = [replace(ops[j], lo=0, hi=blocks) for j in mine]
        if k <= 0 or k >= blocks:  # none or all of every part's blocks: nothing to agree on
            sub = [Resolution(0 if k <= 0 else part.count) for part in parts]
        else:
            sub = global_plan(parts, k * int(table.size[i]), comm, retain=retain, scratch=scratch)
        for j, plan in zip(mine, sub, strict=True):
            plans[j] = plan
    return plans


def _passes(
    ops: Sequence[ScoredOp], where: list[int], brackets: Brackets, retain: bool, scratch: Scratch
) -> list[CountPass]:
    if retain:
        jobs = [(op, brackets.low[i], brackets.high[i]) for op, i in zip(ops, where, strict=True)]
        return map_ops(retained_pass, jobs, parallel=worth_spreading(ops))
    passes = []
    for op, i in zip(ops, where, strict=True):
        low, high = brackets.low[i], brackets.high[i]
        passes.append(count_pass(op.get(), low, high, scratch, retain=False))
        release_freed_memory()  # this op's scores, before the next op's
    return passes


def _solve(
    ops: Sequence[ScoredOp],
    where: list[int],
    passes: Sequence[CountPass],
    table: OpTable,
    target: int,
    brackets: Brackets,
    comm: Comm,
) -> Solved | Missed:
    """Exact counts (table order) and this rank's verdicts, from every rank's pairs."""
    n_ops = table.ids.numel()
    summed = comm.sum(local_below(passes, where, brackets, n_ops).reshape(-1)).reshape(2, n_ops)
    base = base_of(summed, table, brackets, target)
    if isinstance(base, Missed):
        return base
    pairs = _Pairs.gather(ops, where, passes, comm)
    counts = cross(pairs.walk(brackets, base, table), table, base, target)
    if isinstance(counts, Missed):
        return counts
    verdicts = [
        pairs.verdict(op, found, i, int(counts[i]) - int(base.below[i]))
        for op, found, i in zip(ops, passes, where, strict=True)
    ]
    return Solved(counts, verdicts)


class _Pairs:
    """Every rank's candidate pairs: value, count, owner (table row) and the part's first
    block in its op (row shards share ties in row order)."""

    def __init__(self, values: Tensor, counts: Tensor, owner: Tensor, offset: Tensor) -> None:
        self.values, self.counts, self.owner, self.offset = values, counts, owner, offset

    @classmethod
    def gather(
        cls, ops: Sequence[ScoredOp], where: list[int], passes: Sequence[CountPass], comm: Comm
    ) -> _Pairs:
        lengths = torch.tensor([p.pair_values.numel() for p in passes], dtype=torch.int64)
        position = torch.tensor(where, dtype=torch.int64)
        offsets = torch.tensor([op.offset for op in ops], dtype=torch.int64)
        values = concat([p.pair_values.to(torch.float64) for p in passes], torch.float64)
        return cls(
            comm.gather(values)[0],
            comm.gather(concat([p.pair_counts for p in passes], torch.int64))[0],
            comm.gather(torch.repeat_interleave(position, lengths))[0],
            comm.gather(torch.repeat_interleave(offsets, lengths))[0],
        )

    def walk(self, brackets: Brackets, base: Base, table: OpTable) -> Walk:
        """The pairs in ``[a, b)``, summed per (value, op), in (value, op) order: the tie
        rule between ops."""
        inside = brackets.holds(self.values)
        values, counts, owner = self.values[inside], self.counts[inside], self.owner[inside]
        n_ops = table.ids.numel()
        in_range = torch.zeros(n_ops, dtype=torch.int64).index_add_(0, owner, counts)
        order = torch.sort(owner, stable=True).indices
        order = order[torch.sort(values[order], stable=True).indices]
        key_value, key_owner = values[order], owner[order]
        new = torch.ones(order.numel(), dtype=torch.bool)
        new[1:] = (key_value[1:] != key_value[:-1]) | (key_owner[1:] != key_owner[:-1])
        group = torch.cumsum(new, 0) - 1
        pair_owner = key_owner[new]
        pair_count = torch.zeros(int(new.sum()), dtype=torch.int64).index_add_(
            0, group, counts[order]
        )
        within = None
        if not caps_free(base, in_range, table):  # blocks of the same op before each pair
            within = _exclusive_cumsum_by(pair_owner, pair_count, n_ops)
        return Walk(pair_owner, pair_count, within)

    def verdict(self, op: ScoredOp, found: CountPass, i: int, take: int) -> Verdict | None:
        """This part's verdict: the op's threshold from every part's pairs, and this part's
        share of the ties at it (parts in row order)."""
        mine = self.owner == i
        merged_values, inverse = torch.unique(self.values[mine], sorted=True, return_inverse=True)
        merged_counts = torch.zeros(merged_values.numel(), dtype=torch.int64).index_add_(
            0, inverse, self.counts[mine]
        )
        verdict = threshold(merged_values, merged_counts, take, found.floor)
        if verdict is None or take == 0:
            return verdict
        at_tau = mine & (self.values == verdict.tau)
        earlier = int(self.counts[at_tau & (self.offset < op.offset)].sum())
        local = found.pair_counts[found.pair_values == verdict.tau]
        own = int(local.sum()) if local.numel() else 0
        return Verdict(verdict.tau, max(0, min(verdict.ties - earlier, own)))


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
