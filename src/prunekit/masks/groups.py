"""N:M groups: M consecutive weights along the input side, of which a pruned group loses N.

The layout of INC's ``"N:M"`` (see :mod:`prunekit.patterns.ninm`): groups of ``m``
consecutive columns of INC's 2-D view (Linear ``(out, in)``, Conv ``(out, kernel * in)``
with in fastest), one block per group. The engine decides which groups are pruned (a group
scores by the mean of its weights); within a pruned group the ``n`` lowest-scoring weights
go, ties to the lower index. When M does not divide the view's width, the ``cols % m`` edge
columns of each row belong to no group and stay dense.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prunekit.masks.geometry import Reduce
from prunekit.masks.numeric import lowest_key, sortable_keys
from prunekit.masks.views import from_2d, to_2d

# Groups up to this size rank their weights by pairwise comparisons; larger ones sort.
_PAIRWISE_UP_TO = 8
# Fewer weights than this sort too: the pairwise ranking's m(m-1)/2 steps cost more than one
# sort there (measured, 2:4: 256 rows 57 us against 21 us; 1024 rows about even; 4096 rows
# 85 us against 243 us). SparseGPT's N:M sweep asks for one group of columns at a time.
_SORT_BELOW = 4096


class GroupLayout:
    """Groups of ``m`` consecutive columns of the 2-D view of ``shape``; one block per group.

    Blocks are numbered row-major over ``(rows, full_groups)``. ``block_size`` is ``n``: a
    pruned group loses n weights, so caps and counts are taken in those (``blocks_at``).
    """

    partial_edges = "edge weights stay dense"

    def __init__(self, shape: tuple[int, ...], n: int, m: int) -> None:
        self.shape = tuple(shape)
        self.rows = shape[0]
        self.cols = math.prod(shape[1:])
        self.n, self.m = n, m
        self.groups = self.cols // m
        self.num_blocks = self.rows * self.groups
        self.block_size = n
        self.sizes: Tensor | None = None
        self.limit_note = f"at most {n} of every {m} weights"
        if self.groups * m != self.cols:
            self.limit_note += ", edge columns dense"
        self.indivisible_reason: str | None = (
            None
            if self.cols % m == 0 and self.groups > 0
            else f"its 2-D view ({self.rows}, {self.cols}) width is not a multiple of M={m}"
        )

    def grouped(self, values: Tensor) -> Tensor:
        """Weight-shaped ``values`` -> ``(rows, groups, m)``: the full groups."""
        return to_2d(values)[:, : self.groups * self.m].reshape(self.rows, self.groups, self.m)

    def reduce(self, values: Tensor, how: Reduce) -> Tensor:
        groups = self.grouped(values)
        if how == "max":
            return groups.amax(dim=2).reshape(-1)
        if how == "sum":
            return groups.sum(dim=2).reshape(-1)
        return groups.mean(dim=2).reshape(-1)

    def expand(self, block_values: Tensor) -> Tensor:
        """Each group's value over its m weights; edge columns stay True (dense)."""
        per_group = block_values.reshape(self.rows, self.groups, 1).expand(-1, -1, self.m)
        return self._place(per_group)

    def blocks_at(self, ratio: float) -> float:
        """Pruned groups (of N removed weights each) that make the op ``ratio`` sparse."""
        return float(ratio * math.prod(self.shape) / self.n)

    def removed(self, pre_mask: Tensor) -> Tensor:
        """Groups a pre-mask already left with N or more removed weights."""
        removed: Tensor = (~self.grouped(pre_mask)).sum(dim=2)
        full: Tensor = removed >= self.n
        return full.reshape(-1)

    def expand_within(self, keep_blocks: Tensor, scores: Tensor, pre_mask: Tensor | None) -> Tensor:
        """The mask: in every pruned group (False in ``keep_blocks``) its N lowest weights
        are removed, weights a pre-mask removed first; kept groups stay dense."""
        grouped = self.grouped(scores)
        if pre_mask is None:
            keys = grouped  # float comparisons order scores exactly (NaN was refused)
        else:  # weights already removed go first within their group: integer keys, sentinel
            keys = sortable_keys(grouped)
            keys[~self.grouped(pre_mask.to(scores.device))] = lowest_key(keys)
        kept = kept_in_groups(keys, self.n)
        if not bool((~keep_blocks).all()):  # some groups stay dense
            kept |= keep_blocks.reshape(self.rows, self.groups, 1)
        return self._place(kept)

    def hardware_valid(self, mask: Tensor) -> bool:
        """Whether ``mask`` is N:M in every group (what sparse tensor cores need): no dense
        edge and exactly N removed in every group of M."""
        if self.groups * self.m != self.cols:
            return False
        removed = (~self.grouped(mask)).sum(dim=2)
        return bool((removed == self.n).all())

    def _place(self, keep_groups: Tensor) -> Tensor:
        """Weight-shaped mask from per-weight keep decisions of the full groups."""
        if self.groups * self.m == self.cols:
            return from_2d(keep_groups.reshape(self.rows, self.cols), self.shape).contiguous()
        view = torch.ones((self.rows, self.cols), dtype=torch.bool, device=keep_groups.device)
        view[:, : self.groups * self.m] = keep_groups.reshape(self.rows, -1)
        return from_2d(view, self.shape).contiguous()


def kept_in_groups(keys: Tensor, n: int) -> Tensor:
    """Bool ``(rows, groups, m)``: False for the ``n`` lowest keys of every group (ties to
    the lower index), True for the others.

    Small groups (2:4, 4:8) rank each weight by comparing every pair of positions once: a
    weight's rank is how many of its group rank below it, summed in byte vectors, one per
    position. Each comparison reads two strided columns and writes a contiguous vector, so
    the work is m(m-1)/2 comparisons of ``rows * groups`` elements, several times faster
    than a sort along a dim of 4. Larger groups sort, and so do few weights."""
    m = keys.shape[-1]
    flat = keys.reshape(-1, m)
    if m > _PAIRWISE_UP_TO or flat.numel() < _SORT_BELOW:
        lowest = torch.sort(flat, dim=1, stable=True).indices[:, :n]
        kept = torch.ones(flat.shape, dtype=torch.bool, device=keys.device)
        return kept.scatter_(1, lowest, False).reshape(keys.shape)
    count = flat.shape[0]
    # Position i starts as if every later position ranked below it; each pair (i, j), i < j,
    # where x_i <= x_j moves one rank from i to j.
    rank = [
        torch.full((count,), m - 1 - i, dtype=torch.uint8, device=keys.device) for i in range(m)
    ]
    for i in range(m):
        for j in range(i + 1, m):
            earlier_not_above = torch.le(flat[:, i], flat[:, j]).view(torch.uint8)
            rank[j].add_(earlier_not_above)
            rank[i].sub_(earlier_not_above)
    return torch.stack([r >= n for r in rank], dim=1).reshape(keys.shape)
