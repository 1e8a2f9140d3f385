"""Where the threshold lies: stratified samples of the scores, and brackets around it.

A sample of a few hundred thousand block scores estimates where the threshold lies, caps
included, and gives a narrow bracket ``[a, b)`` around it, wide enough (``MARGIN_SIGMAS``
standard deviations of the sample quantile) that it holds the threshold with overwhelming
probability and about ``10 / sqrt(samples)`` of the blocks. An op that a cap holds away from
the global threshold gets a bracket around its own cap-th score instead. The answer never
depends on the sample: a bracket that misses is detected by the exact counts and widened.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.masks.select.kernels import concat, order_by_value, rank_bracket, sorted_values
from prunekit.masks.select.memory import release_freed_memory
from prunekit.masks.select.scored import OpTable, ScoredOp

GLOBAL_SAMPLE = 1 << 18
LOCAL_SAMPLE = 1 << 14
MARGIN_SIGMAS = 5.0
# A bracket that misses is widened 8x, then 64x, then opened: the answer stays exact.
WIDENINGS = 4

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
# Sample indices are cached per (blocks, samples) up to this many samples (ops of one shape
# share them: BERT's q, k, v and o).
_CACHED_STRATA = 1 << 18


def sample(values: Tensor, count: int) -> Tensor:
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


def local_sample(blocks: int) -> int:
    """Samples for one op's bracket: LOCAL_SAMPLE up to 2^18 blocks, then growing as
    blocks^(2/3), which balances drawing the sample against handling the candidates
    (about 10 / sqrt(samples) of the blocks): 28K samples for 0.6M blocks, 70K for 2.4M."""
    growth: float = max(1.0, blocks / (1 << 18)) ** (2 / 3)
    return round(LOCAL_SAMPLE * growth)


def global_sample(blocks: int) -> int:
    """Samples for a global bracket: GLOBAL_SAMPLE, more on very large models, so that the
    candidates (about 5 / sqrt(samples) of all blocks) stay small in memory."""
    return max(GLOBAL_SAMPLE, min(1 << 22, blocks // 1024))


def bracket(
    drawn: Tensor, position: float, widen: int = 0, *, ordered: bool = True
) -> tuple[float | None, float | None]:
    """Sample values ``MARGIN_SIGMAS * 8**widen`` standard deviations of rank around
    ``position`` (None: open). The bracket ``[a, b)`` holds whole tie groups: ``a`` is a
    sample value and ``b`` the next larger sample value, so a value shared by many blocks
    (bf16 scores) is never split by the bracket's upper end. ``ordered=False``: the sample
    is not sorted, and the two ranks are found by selection."""
    if widen >= WIDENINGS - 1:
        return None, None  # the last resort: every block is a candidate
    size = drawn.numel()
    q = min(max(position / max(size, 1), 0.0), 1.0)
    margin = MARGIN_SIGMAS * 8**widen * math.sqrt(size * q * (1 - q) + 1.0) + 2
    low, high = math.floor(position - margin), math.ceil(position + margin)
    if not ordered:
        return rank_bracket(drawn, low if low > 0 else None, high if high < size else None)
    a = float(drawn[low]) if low > 0 else None
    b = None
    if high < size:
        above = int(torch.searchsorted(drawn, drawn[high : high + 1], right=True))
        b = float(drawn[above]) if above < size else None
    return a, b


def draw(ops: Sequence[ScoredOp], blocks: int, *, release: bool = False) -> tuple[Tensor, Tensor]:
    """A stratified sample of every op part's scores, ``blocks / samples`` blocks per sample
    (``blocks``: of every op in the selection), and the op id of each sample."""
    wanted = global_sample(blocks)
    drawn: list[Tensor] = []
    for op in ops:
        drawn.append(sample(op.get(), max(1, round(wanted * op.count / blocks))))
        if release:
            release_freed_memory()  # scores computed on demand: this op's, before the next
    owners = [
        torch.full((d.numel(),), op.op, dtype=torch.int64) for d, op in zip(drawn, ops, strict=True)
    ]
    return concat(drawn, torch.float64), concat(owners, torch.int64)


@dataclass
class Estimate:
    """Where the sample says the threshold lies (identical on every rank)."""

    merged: Tensor  # every op's sampled scores, ascending (float64 or float32)
    position: float  # where in ``merged`` the estimated capped total reaches the target
    samples: list[Tensor]  # each op's sampled scores, ascending (table order)
    weight: Tensor  # blocks each of an op's samples stands for
    guess: Tensor  # blocks each op would remove at the estimated threshold, caps ignored


def estimate(values: Tensor, owners: Tensor, table: OpTable, target: int) -> Estimate:
    """The point in the samples' merged order where the estimated capped total reaches
    ``target``: each sample, in ascending order, adds its op's capped increment, so one
    sort and one cumulative sum give the estimate at every point. The extra memory is a few
    times the sample (tens of MB for the 4M samples of a 7B model), whatever the model's
    size. ``values``/``owners``: every sample of every op, and its op id."""
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
    grouped = concat(samples, values.dtype)
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
    return Estimate(merged, float(position), samples, weight, guess)


def _estimated_totals(owner: Tensor, rank: Tensor, weight: Tensor, table: OpTable) -> Tensor:
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
class Brackets:
    """The global bracket ``[a, b)`` (None: open) and each op's own (table order).

    An op whose estimated count is held by a cap is bracketed around its own cap-th score
    instead: when that bracket lies wholly below ``a`` (or above ``b``), the op is
    *saturated* over the global bracket and one pass settles both its count and its mask;
    when the two overlap, the op gets their hull. ``shared[i]``: op ``i``'s bracket is the
    global one; ``below[i]`` / ``above[i]``: it lies wholly below ``a`` / above ``b``."""

    a: float | None
    b: float | None
    low: list[float | None]
    high: list[float | None]
    shared: list[bool]
    below: list[bool]
    above: list[bool]

    def holds(self, values: Tensor) -> Tensor:
        """Which of ``values`` lie in the global bracket ``[a, b)`` (an open end holds every
        value on its side, infinities included)."""
        inside = torch.ones(values.shape, dtype=torch.bool, device=values.device)
        if self.a is not None:
            inside &= values >= self.a
        if self.b is not None:
            inside &= values < self.b
        return inside

    @property
    def floor(self) -> float:
        """``a``, or -inf when the bracket is open below."""
        return self.a if self.a is not None else -math.inf


def make_brackets(found: Estimate, table: OpTable, widen: int) -> Brackets:
    """The brackets for the ``widen``-th attempt (each attempt 8x wider)."""
    a, b = bracket(found.merged, found.position, widen)
    made = Brackets(a, b, [], [], [], [], [])
    guesses, weights = found.guess.tolist(), found.weight.tolist()
    for i, (guess, weight) in enumerate(zip(guesses, weights, strict=True)):
        lo, hi = int(table.lo[i]), int(table.hi[i])
        cap = hi if guess > hi else lo if guess < lo else None
        own_a, own_b = a, b
        wholly_below = wholly_above = False
        if cap is not None:
            own_a, own_b = bracket(found.samples[i], cap / weight, widen)
            wholly_below = cap == hi and own_b is not None and a is not None and own_b <= a
            wholly_above = cap == lo and own_a is not None and b is not None and own_a >= b
            if not (wholly_below or wholly_above):  # the hull of both
                own_a = None if own_a is None or a is None else min(own_a, a)
                own_b = None if own_b is None or b is None else max(own_b, b)
        made.low.append(own_a)
        made.high.append(own_b)
        made.shared.append(own_a == a and own_b == b)
        made.below.append(wholly_below)
        made.above.append(wholly_above)
    return made
