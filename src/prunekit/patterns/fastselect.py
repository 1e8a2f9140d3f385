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
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.errors import ImpossibleTargetError

# Sample sizes: a bracket of +-MARGIN_SIGMAS standard deviations of the sample quantile holds
# the threshold with overwhelming probability and about 10/sqrt(S) of the blocks.
GLOBAL_SAMPLE = 1 << 18
LOCAL_SAMPLE = 1 << 14
MARGIN_SIGMAS = 5.0
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

    def __post_init__(self) -> None:
        if self.count < 0:
            if callable(self.values):
                raise ValueError("FastOp: give count when values is a function")
            self.count = self.values.numel()

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


def _bracket(sorted_sample: Tensor, position: float) -> tuple[float | None, float | None]:
    """Sample values ``MARGIN_SIGMAS`` standard deviations of rank around ``position``."""
    size = sorted_sample.numel()
    q = min(max(position / max(size, 1), 0.0), 1.0)
    margin = MARGIN_SIGMAS * math.sqrt(size * q * (1 - q) + 1.0) + 2
    low, high = math.floor(position - margin), math.ceil(position + margin)
    a = float(sorted_sample[low]) if low > 0 else None
    b = float(sorted_sample[high]) if high < size else None
    if a is not None and b is not None and a == b:
        b = math.nextafter(b, math.inf)
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
    a, b = _bracket(sample, k / n * sample.numel())
    for _ in range(3):
        found = _count_pass(values, a, b, scratch)
        take = k - found.below
        if 0 <= take <= found.candidates.numel():
            rank = _ranks(found.candidate_values)
            return Resolution(k, b, found.candidates, rank >= take, found.keep).materialize(
                FastOp(values, 1, 0, n)
            )
        a, b = (None, b) if take < 0 else (a, None)  # widen the side that missed
    raise AssertionError("unreachable: an open bracket holds every block")  # pragma: no cover


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


def global_plan(
    ops: Sequence[FastOp],
    target: int,
    total: int | None = None,
    *,
    retain: bool = False,
    scratch: _Scratch | None = None,
) -> list[Resolution]:
    """How each op's keep mask is rebuilt under global scope (see :func:`global_select`).

    With ``retain=False`` no mask outlives its counting pass: only counts and candidates
    (a fraction of a percent of the blocks) are kept, and :meth:`Resolution.materialize`
    recomputes each mask with one comparison when it is wanted, one op at a time."""
    reachable = sum(op.hi * op.size for op in ops)
    if reachable < target:
        total = total or sum(op.count * op.size for op in ops)
        raise ImpossibleTargetError(
            f"the pattern and the per-op caps allow removing at most {reachable} of {total} "
            f"elements ({reachable / max(total, 1):.2%}) but the target asks for {target} "
            f"({target / max(total, 1):.2%}): short by {target - reachable} elements; raise "
            "max_sparsity_ratio_per_op or lower the target"
        )
    generator = torch.Generator().manual_seed(_SEED)
    scratch = scratch or _Scratch()
    if sum(op.lo * op.size for op in ops) >= target:
        return [Resolution(op.lo) for op in ops]
    a, b = _global_bracket(ops, target, generator)
    for _ in range(3):
        passes = [_count_pass(op.get(), a, b, scratch, retain=retain) for op in ops]
        outcome = _solve_candidates(ops, passes, target)
        if isinstance(outcome, tuple):
            counts, ranks = outcome
            return [
                Resolution(k, b, found.candidates, rank >= k - found.below, found.keep)
                if 0 <= k - found.below <= found.candidates.numel()
                else Resolution(k)
                for found, k, rank in zip(passes, counts, ranks, strict=True)
            ]
        a, b = (None, b) if outcome == "low" else (a, None)
    raise AssertionError("unreachable: an open bracket holds every block")  # pragma: no cover


def _global_sample(blocks: int) -> int:
    """Samples for a global bracket: GLOBAL_SAMPLE, more on very large models, so that the
    candidates (about 5 / sqrt(samples) of all blocks) stay small in memory."""
    return max(GLOBAL_SAMPLE, min(1 << 22, blocks // 1024))


def _global_bracket(
    ops: Sequence[FastOp], target: int, generator: torch.Generator
) -> tuple[float | None, float | None]:
    """Estimate the threshold from a sample of every op (each sample stands for
    ``blocks / samples`` blocks of its op), caps included."""
    blocks = sum(op.count for op in ops)
    values, owners, ranks, weights = [], [], [], []
    for index, op in enumerate(ops):
        share = max(1, round(_global_sample(blocks) * op.count / blocks))
        drawn = torch.sort(_sample(op.get(), share, generator)).values
        values.append(drawn)
        owners.append(torch.full((drawn.numel(),), index, dtype=torch.int64))
        ranks.append(torch.arange(drawn.numel(), dtype=torch.float64))
        weights.append(op.count / drawn.numel())
    order = torch.sort(torch.cat(values), stable=True)
    value = order.values
    owner = torch.cat(owners)[order.indices]
    weight = torch.tensor(weights, dtype=torch.float64)[owner]
    size = torch.tensor([op.size for op in ops], dtype=torch.float64)[owner]
    lo = torch.tensor([op.lo for op in ops], dtype=torch.float64)[owner]
    hi = torch.tensor([op.hi for op in ops], dtype=torch.float64)[owner]
    before = torch.cat(ranks)[order.indices] * weight
    gained = size * (torch.clamp(before + weight, lo, hi) - torch.clamp(before, lo, hi))
    start = sum(op.size * min(max(0, op.lo), op.hi) for op in ops)
    reached = start + torch.cumsum(gained, 0)
    wanted = torch.tensor([float(target)], dtype=torch.float64)
    return _bracket(value, float(torch.searchsorted(reached, wanted)))


def _solve_candidates(
    ops: Sequence[FastOp], passes: Sequence[_Pass], target: int
) -> tuple[list[int], list[Tensor]] | str:
    """Exact per-op counts, and each candidate's rank within its op in (value, index)
    order, from the candidates; or "low"/"high" if the bracket missed."""
    below = torch.tensor([p.below for p in passes], dtype=torch.int64)
    lo = torch.tensor([op.lo for op in ops], dtype=torch.int64)
    hi = torch.tensor([op.hi for op in ops], dtype=torch.int64)
    size = torch.tensor([op.size for op in ops], dtype=torch.int64)
    start = int((size * torch.clamp(below, lo, hi)).sum())
    if start >= target:
        return "low"
    ranks = [_ranks(p.candidate_values) for p in passes]  # within each op: (value, index)
    values = torch.cat([p.candidate_values for p in passes])
    owner = torch.cat(
        [torch.full((p.candidates.numel(),), i, dtype=torch.int64) for i, p in enumerate(passes)]
    )
    order = torch.sort(values, stable=True).indices  # ties keep (op, index) order
    owner = owner[order]
    rank = torch.cat(ranks)[order]
    counted = below[owner] + rank
    gained = torch.where((counted >= lo[owner]) & (counted < hi[owner]), size[owner], 0)
    reached = start + torch.cumsum(gained, 0)
    if reached.numel() == 0 or int(reached[-1]) < target:
        return "high"
    last = int(torch.searchsorted(reached, torch.tensor([target])))
    overshoot = int(reached[last]) - target
    if overshoot > 0 and overshoot >= int(gained[last]) - overshoot:
        last -= 1  # dropping the last block lands nearer (or as near): fewer
    taken = torch.bincount(owner[: last + 1], minlength=len(ops))
    return [int(k) for k in torch.clamp(below + taken, lo, hi)], ranks
