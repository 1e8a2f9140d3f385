"""The reference selection: exact for any block sizes, the answer the counting engine must give.

The counting engine (:mod:`prunekit.masks.select.counting`) is the fast path for blocks of
equal size; this one also handles partial edge blocks and blocks a pre-mask removed tying
with ``-inf`` scores, and the tests check the counting engine against it.

Everything here works on *keys*: integers that sort exactly like the block scores (see
:func:`~prunekit.masks.numeric.sortable_keys`), so ties, ``-0.0``, ``inf`` and "already
removed" sentinels are exact integer comparisons. Selection never sorts every block:

* :func:`lowest_k` removes the ``k`` lowest keys of one op (one ``kthvalue`` and one pass for
  the ties, which go to the lower flat index);
* :func:`global_counts` finds how many blocks each op removes under global scope with
  per-op caps, by a radix search over the keys' bits (16 bits at a time, a weighted
  ``bincount`` per op per round), which evaluates the capped total at 65,536 candidate
  thresholds per pass. Two passes for float32 keys, four for float64 (8-bit digits, twice
  the passes, for small problems where the histograms would dominate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.masks.limits import unreachable_target

# Radix digits: 16 bits (65,536 buckets, two passes over float32 keys) pays off on large
# models; below this many blocks, 8-bit digits keep the per-pass histograms tiny.
_WIDE_DIGITS_FROM = 1 << 16


def lowest_k(keys: Tensor, k: int) -> Tensor:
    """Bool tensor shaped like the 1-D ``keys``: True for the ``k`` lowest keys, ties broken
    toward the lower index."""
    n = keys.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=keys.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=keys.device)
    kth = torch.kthvalue(keys, k).values
    chosen = keys < kth
    need = k - int(chosen.sum())
    tied = keys == kth
    chosen |= tied & (torch.cumsum(tied, 0) <= need)
    return chosen


@dataclass
class KeyedOp:
    """One op's blocks as the global search sees them.

    ``keys``: 1-D sortable keys, one per block. ``sizes``: elements per block when they
    differ (partial edge blocks), else None and every block has ``block_size`` elements.
    ``lo``/``hi``: how many blocks this op must / may remove (caps, already raised to cover
    blocks that a pre-mask removed).
    """

    keys: Tensor
    sizes: Tensor | None
    block_size: int
    lo: int
    hi: int

    @property
    def num_blocks(self) -> int:
        return self.keys.numel()

    @property
    def num_elements(self) -> int:
        if self.sizes is None:
            return self.num_blocks * self.block_size
        return int(self.sizes.sum())

    def elements_of_lowest(self, k: int) -> int:
        """Elements in the ``k`` lowest blocks (the blocks :func:`lowest_k` would pick)."""
        if self.sizes is None or k <= 0:
            return max(k, 0) * self.block_size
        return int(self.sizes[lowest_k(self.keys, k)].sum())


def global_counts(
    ops: Sequence[KeyedOp], target_elements: int, total_elements: int | None = None
) -> list[int]:
    """How many blocks each op removes so that, together, ``target_elements`` are removed.

    The blocks are taken lowest key first across all ops (ties: earlier op, then lower
    index), except that each op's count is held within ``[lo, hi]``: an op at its max stops
    and the rest of the budget goes to the others; an op below its min is brought up to it.
    The total lands on whole blocks nearest to ``target_elements`` (half-way: fewer).
    ``total_elements`` (default: every block's elements) is only used in error messages.
    """
    e_lo = [op.elements_of_lowest(op.lo) for op in ops]
    e_hi = [op.elements_of_lowest(op.hi) for op in ops]
    reachable = sum(e_hi)
    if reachable < target_elements:
        total = total_elements or sum(op.num_elements for op in ops)
        raise unreachable_target(reachable, target_elements, total)
    if sum(e_lo) >= target_elements or not ops:
        return [op.lo for op in ops]

    search = _RadixSearch(ops, e_lo, e_hi, target_elements)
    return search.run()


class _RadixSearch:
    """Finds the threshold key digit by digit, then shares the ties at it in op order."""

    def __init__(self, ops: Sequence[KeyedOp], e_lo: list[int], e_hi: list[int], target: int):
        self.ops = ops
        self.target = target
        self.device = ops[0].keys.device
        self.lo = torch.tensor([op.lo for op in ops], dtype=torch.float64)
        self.hi = torch.tensor([op.hi for op in ops], dtype=torch.float64)
        self.e_lo = torch.tensor(e_lo, dtype=torch.float64)
        self.e_hi = torch.tensor(e_hi, dtype=torch.float64)
        self.width = torch.iinfo(ops[0].keys.dtype).bits
        self.bits = 16 if sum(op.num_blocks for op in ops) >= _WIDE_DIGITS_FROM else 8
        self.buckets = 1 << self.bits
        # Blocks (and their elements) with keys below the current prefix, per op.
        self.base_count = torch.zeros(len(ops), dtype=torch.float64)
        self.base_elems = torch.zeros(len(ops), dtype=torch.float64)

    def _capped_elements(self, counts: Tensor, elems: Tensor) -> Tensor:
        """Elements removed per op (rows) at each candidate threshold (columns)."""
        lo, hi = self.lo[:, None], self.hi[:, None]
        return torch.where(
            counts < lo, self.e_lo[:, None], torch.where(counts > hi, self.e_hi[:, None], elems)
        )

    def run(self) -> list[int]:
        in_range: list[Tensor | None] = [None] * len(self.ops)
        tied_counts = torch.zeros(len(self.ops), dtype=torch.float64)
        for shift in range(self.width - self.bits, -1, -self.bits):
            hist = torch.zeros(len(self.ops), self.buckets, dtype=torch.float64)
            whist = torch.zeros(len(self.ops), self.buckets, dtype=torch.float64)
            digits: list[Tensor] = []
            for i, op in enumerate(self.ops):
                keys = op.keys if in_range[i] is None else op.keys[in_range[i]]
                d = self._digits(keys, shift)
                digits.append(d)
                counts = torch.bincount(d, minlength=self.buckets).to(torch.float64).cpu()
                hist[i] = counts
                if op.sizes is None:
                    whist[i] = counts * op.block_size
                else:
                    sizes = op.sizes if in_range[i] is None else op.sizes[in_range[i]]
                    whist[i] = torch.bincount(
                        d, weights=sizes.to(torch.float64), minlength=self.buckets
                    ).cpu()
            at_or_below = self._capped_elements(
                self.base_count[:, None] + hist.cumsum(1),
                self.base_elems[:, None] + whist.cumsum(1),
            )
            total = at_or_below.sum(0)
            digit = int(
                torch.searchsorted(total, torch.tensor([float(self.target)], dtype=torch.float64))
            )
            below = hist[:, :digit].sum(1)
            self.base_count += below
            self.base_elems += whist[:, :digit].sum(1)
            tied_counts = hist[:, digit]
            for i in range(len(self.ops)):
                hit = digits[i] == digit
                if in_range[i] is None:
                    in_range[i] = hit
                else:
                    mask = in_range[i]
                    assert mask is not None
                    narrowed = torch.zeros_like(mask)
                    narrowed[mask] = hit
                    in_range[i] = narrowed
        return self._share_ties(tied_counts, in_range)

    def _digits(self, keys: Tensor, shift: int) -> Tensor:
        if shift == self.width - self.bits:
            return (keys >> shift).to(torch.int64) + (self.buckets // 2)
        return ((keys >> shift) & (self.buckets - 1)).to(torch.int64)

    def _share_ties(self, tied: Tensor, tied_masks: Sequence[Tensor | None]) -> list[int]:
        """Counts below the threshold key, plus the tied blocks taken in op order."""
        below = self.base_count
        k_lt = torch.minimum(torch.maximum(below, self.lo), self.hi)
        k_le = torch.minimum(torch.maximum(below + tied, self.lo), self.hi)
        elems_lt = self._capped_elements(below[:, None], self.base_elems[:, None])[:, 0]
        need = self.target - int(elems_lt.sum())
        counts = [int(c) for c in k_lt]
        for i, op in enumerate(self.ops):
            available = int(k_le[i] - k_lt[i])
            if need <= 0 or available <= 0:
                continue
            if op.sizes is None:
                take = min(available, -(-need // op.block_size))
                gained, last = take * op.block_size, op.block_size
            else:
                mask = tied_masks[i]
                assert mask is not None
                offset = int(k_lt[i] - below[i])
                sizes = op.sizes[mask][offset : offset + available].to(torch.int64)
                cumulative = torch.cumsum(sizes, 0)
                take = min(available, int(torch.searchsorted(cumulative, torch.tensor([need]))) + 1)
                gained, last = int(cumulative[take - 1]), int(sizes[take - 1])
            counts[i] += take
            need -= gained
            if need <= 0:
                overshoot = -need
                if overshoot >= last - overshoot and overshoot > 0:
                    counts[i] -= 1  # dropping the last block lands nearer (or as near)
                break
        return counts
