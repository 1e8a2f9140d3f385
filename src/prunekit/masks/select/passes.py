"""One op's counting pass, its verdict, and the mask the verdict makes.

The counting engine never sorts an op's blocks. For a bracket ``[a, b)`` around the
threshold, one **pass** over the op's block scores counts the blocks below ``a``, keeps the
comparison ``>= b`` (the bulk of the mask) and gathers the few **candidates** in the bracket.
A **verdict** then says: remove every block scoring below ``tau`` and the first ``ties``
blocks (by index) scoring exactly ``tau``. :class:`Resolution` turns a verdict into the
op's keep mask, reusing the pass's comparison when it was retained.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.masks.select.brackets import WIDENINGS, bracket, local_sample, sample
from prunekit.masks.select.kernels import (
    count_true,
    greater_equal,
    kth_smallest,
    value_pairs,
)
from prunekit.masks.select.scored import ScoredOp


@dataclass(frozen=True)
class Verdict:
    """Remove every block scoring below ``tau`` and the first ``ties`` blocks (by index)
    scoring exactly ``tau``."""

    tau: float
    ties: int


@dataclass
class CountPass:
    """What one counting pass learned about one op part for a bracket ``[a, b)``: the
    blocks below ``a``, the candidates in ``[a, b)`` and, when retained, the mask of those
    at or above ``b``. Without retention only the candidates' (value, count) pairs are kept
    (a handful when scores are bf16 and tie in large groups)."""

    below: int  # blocks with value < a
    floor: float  # a, or -inf for an open bracket
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

    def verdict(self, take: int) -> Verdict | None:
        """The verdict that removes ``take`` of the candidates, lowest first (none: the
        threshold stays at the bracket's floor); None if ``take`` is not within them."""
        if self.candidate_values is None or take <= 0 or take > self.count:
            return threshold(self.pair_values, self.pair_counts, take, self.floor)
        tau = kth_smallest(self.candidate_values, take)
        return Verdict(tau, take - self.count_below(tau))

    def resolution(self, k: int, verdict: Verdict) -> Resolution:
        """The op's mask maker for ``verdict`` (``k``: the blocks it removes in all)."""
        return Resolution(k, verdict, self.kept, self.candidates, self.candidate_values)


def threshold(pair_values: Tensor, pair_counts: Tensor, take: int, floor: float) -> Verdict | None:
    """The verdict that removes ``take`` blocks from a bracket's (value, count) pairs, lowest
    first; ``take == 0`` keeps the threshold at ``floor``. None if ``take`` is not within
    the bracket."""
    total = int(pair_counts.sum())
    if take < 0 or take > total:
        return None
    if take == 0:
        return Verdict(floor, 0)
    cumulative = torch.cumsum(pair_counts, 0)
    at = int(torch.searchsorted(cumulative, torch.tensor([take])))
    before = int(cumulative[at - 1]) if at > 0 else 0
    return Verdict(float(pair_values[at]), take - before)


@dataclass
class Resolution:
    """One op's decision: remove its ``k`` lowest blocks, by ``verdict`` when the counting
    found it (None: the op's own threshold lay outside its bracket, and its ``k`` lowest
    blocks are found on their own). ``kept``/``candidates``/``candidate_values``: the
    counting pass's comparison and bracket, kept to build the mask without another pass;
    None in streaming use, where the mask is recomputed from the scores."""

    k: int
    verdict: Verdict | None = None
    kept: Tensor | None = None
    candidates: Tensor | None = None
    candidate_values: Tensor | None = None

    @property
    def self_contained(self) -> bool:
        """Whether the mask is made from what the counting pass kept, without the op's
        scores."""
        return self.verdict is not None and self.kept is not None and self.candidates is not None

    def materialize(self, op: ScoredOp, scratch: Scratch | None = None) -> Tensor:
        """The op's bool keep mask (True = keep)."""
        if self.verdict is None:
            if (self.k <= 0 or self.k >= op.count) and op.whole == op.count:
                return torch.full((op.count,), self.k <= 0, dtype=torch.bool, device=op.where())
            return keep_all_but_lowest(op.get(), self.k, scratch=scratch)
        tau, ties = self.verdict.tau, self.verdict.ties
        if self.kept is not None and self.candidates is not None:
            assert self.candidate_values is not None
            keep, self.kept = self.kept, None
            spared = self.candidate_values > tau
            tied = torch.nonzero(self.candidate_values == tau).flatten()
            spared[tied[ties:]] = True
            keep[self.candidates[spared]] = True
            return keep
        values = op.get()
        keep = values >= tau
        if ties > 0:
            raw = (scratch or Scratch()).get(values.numel(), values.device)
            flags = raw.view(torch.bool)
            torch.eq(values, tau, out=flags[: values.numel()])
            flags[values.numel() :] = False
            keep[sparse_nonzero(raw)[:ties]] = False
        return keep


class Scratch:
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


def thread_scratch() -> Scratch:
    """This thread's work buffers (passes of different ops may run on different threads)."""
    scratch: Scratch | None = getattr(_scratches, "scratch", None)
    if scratch is None:
        scratch = _scratches.scratch = Scratch()
    return scratch


# Blocks per op, on average, from which ops are spread over threads.
_SPREAD_FROM = 1 << 16


def worth_spreading(ops: Sequence[ScoredOp]) -> bool:
    """Whether the ops' passes or selections run on all cores at once
    (:func:`~prunekit.masks.select.threads.map_ops`): every op's scores on the CPU, and ops
    large enough that threads pay (small ops, such as whole channels, finish faster one by
    one)."""
    on_host = all(op.device is None or op.device.type == "cpu" for op in ops)
    return on_host and sum(op.count for op in ops) >= _SPREAD_FROM * len(ops)


def count_pass(
    values: Tensor, a: float | None, b: float | None, scratch: Scratch, *, retain: bool = True
) -> CountPass:
    """One look at every block: how many lie below ``a``, which lie at or above ``b`` and
    which in between (summed up as (value, count) pairs unless ``retain``)."""
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
    candidates = sparse_nonzero(raw)
    candidate_values = values[candidates]
    floor = a if a is not None else -math.inf
    if not retain:
        return CountPass(below, floor, pairs=value_pairs(candidate_values))
    return CountPass(below, floor, candidate_values, keep, candidates)


def retained_pass(job: tuple[ScoredOp, float | None, float | None]) -> CountPass:
    """One op's counting pass for its bracket, its mask kept (a ``map_ops`` job)."""
    op, a, b = job
    return count_pass(op.get(), a, b, thread_scratch())


def sparse_nonzero(raw: Tensor) -> Tensor:
    """Indices of the nonzero bytes of a padded uint8 buffer, ascending, when few are set:
    ``nonzero`` over 8-byte words first (8x fewer elements), then within the hit words."""
    words = raw.view(torch.int64)
    hit = torch.nonzero(words).squeeze(1)
    if hit.numel() == 0:
        return hit
    inside = torch.nonzero(raw.view(-1, 8)[hit])
    return hit[inside[:, 0]] * 8 + inside[:, 1]


def keep_all_but_lowest(values: Tensor, k: int, *, scratch: Scratch | None = None) -> Tensor:
    """Bool per block, True = keep: every block but the ``k`` lowest (ties: lower index).
    One op's selection: a sample brackets the k-th value, one pass settles it."""
    n = values.numel()
    if k <= 0:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    if k >= n:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    scratch = scratch or Scratch()
    drawn = sample(values, local_sample(n))
    position = k / n * drawn.numel()
    for widen in range(WIDENINGS):
        a, b = bracket(drawn, position, widen, ordered=False)
        found = count_pass(values, a, b, scratch)
        verdict = found.verdict(k - found.below)
        if verdict is not None:
            return found.resolution(k, verdict).materialize(ScoredOp(values, 1, 0, n), scratch)
    raise AssertionError("unreachable: the widest bracket holds every block")  # pragma: no cover
