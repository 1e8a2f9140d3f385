"""The N:M family (INC's ``"N:M"``): ``"2:4"``, ``"1:4"``, ``"4:8"``, any ``N < M``.

In every group of M consecutive weights along the input side of INC's 2-D view (the same view
as NxM: Linear ``(out, in)``, Conv ``(out, kernel * in)`` with in fastest), exactly N are
removed, the N lowest-scoring (ties to the lower index). **N counts removed weights, as in
INC**; NVIDIA and the N:M literature count *kept* weights, and the two readings agree only
when N = M/2 (2:4, 4:8).

At ``target_sparsity == N/M`` every group is N:M, the layout sparse tensor cores need. Below
N/M the lowest-scoring groups (a group scores by the mean of its weights) become N:M and the
others stay dense, so the op is not hardware-valid; above N/M is an error. When M does not
divide the view's width, the edge group of each row stays dense (``indivisible="partial"``),
or the op is skipped or refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from prunekit.errors import ImpossibleTargetError, IndivisibleShapeError, InvalidSpecError
from prunekit.hookspecs import Register, hookimpl
from prunekit.patterns.base import Pattern
from prunekit.patterns.layout import BlockLayout, Reduce, from_2d, to_2d
from prunekit.patterns.selection import OpBlocks, removed_sentinel, sortable_keys

if TYPE_CHECKING:
    from prunekit.config import PruningConfig

_SPEC = r"(?P<n>[0-9]+):(?P<m>[0-9]+)"


class GroupLayout:
    """Groups of ``m`` consecutive columns of the 2-D view of ``shape``; one block per group.

    Blocks are numbered row-major over ``(rows, full_groups)``; the ``cols % m`` edge columns
    of each row belong to no group. ``block_size`` is ``n``: a pruned group loses n weights.
    """

    def __init__(self, shape: tuple[int, ...], n: int, m: int) -> None:
        self.shape = tuple(shape)
        self.rows = shape[0]
        self.cols = math.prod(shape[1:])
        self.n, self.m = n, m
        self.groups = self.cols // m
        self.num_blocks = self.rows * self.groups
        self.block_size = n
        self.sizes: Tensor | None = None

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
        """Each group's bool value over its m weights; edge columns stay True (dense)."""
        per_group = block_values.reshape(self.rows, self.groups, 1).expand(-1, -1, self.m)
        return _place(self, per_group)


class NInMPattern(Pattern):
    """N of every M consecutive input-side weights removed (N counts removed, as in INC)."""

    description = "N of every M consecutive input-side weights removed (N counts removed, as INC)"
    family = "N:M groups (INC)"
    spec = _SPEC
    spec_examples = ("2:4", "1:4", "4:8", "1:2", "2:8")

    @classmethod
    def parse_spec(cls, spec: str) -> Mapping[str, Any]:
        match = re.fullmatch(_SPEC, spec)
        if match is None:
            raise InvalidSpecError(
                f"pattern {spec!r} is not an N:M spec: write whole numbers with 1 <= N < M, "
                "as in '2:4' (N counts the removed weights of every M)"
            )
        n, m = int(match["n"]), int(match["m"])
        if not 1 <= n < m:
            raise InvalidSpecError(
                f"pattern {spec!r}: N:M needs 1 <= N < M (N removed of every M), got N={n}, M={m}"
            )
        return {"n": n, "m": m}

    @classmethod
    def default_target(cls, spec: str) -> float | None:
        """N/M: a config that says only ``"2:4"`` asks for the hardware layout."""
        params = cls.parse_spec(spec)
        return float(params["n"]) / float(params["m"])

    @classmethod
    def check_config(cls, config: PruningConfig) -> dict[str, str]:
        params = cls.parse_spec(config.pattern)
        if config.target_sparsity > params["n"] / params["m"] + 1e-12:
            return {
                "target_sparsity": (
                    f"is above N/M = {params['n']}/{params['m']}: pattern "
                    f"{config.pattern!r} removes at most N of every M weights"
                )
            }
        return {}

    @property
    def ratio(self) -> float:
        """N/M: the highest sparsity, reached when every group is N:M."""
        return float(self.params["n"]) / float(self.params["m"])

    def layout(self, name: str, module: nn.Module) -> BlockLayout | None:
        layout = GroupLayout(self.shapes[name], self.params["n"], self.params["m"])
        if layout.cols % layout.m == 0 and layout.groups > 0:
            return layout
        reason = (
            f"its 2-D view ({layout.rows}, {layout.cols}) width is not a multiple of M={layout.m}"
        )
        if self.options.indivisible == "raise":
            raise IndivisibleShapeError(
                f"op {name!r}: {reason}; use indivisible='partial' (edge weights stay dense) "
                "or 'skip'"
            )
        if self.options.indivisible == "skip" or layout.groups == 0:
            self.skip(name, reason)
            return None
        return layout

    # -- the block machinery's hooks: a pruned group loses its N lowest weights -------------
    def check_target(self, target_sparsity: float) -> float:
        target = super().check_target(target_sparsity)
        if target > self.ratio + 1e-12:
            raise ImpossibleTargetError(
                f"target_sparsity {target} is above N/M = {self.params['n']}/{self.params['m']} "
                f"= {self.ratio:g}: pattern {self.config.pattern!r} removes at most N of every M "
                "weights"
            )
        return target

    def _groups_at(self, name: str, sparsity: float) -> float:
        """How many pruned groups (of N removed weights each) make ``sparsity`` of op ``name``."""
        return float(sparsity * math.prod(self.shapes[name]) / int(self.params["n"]))

    def block_caps(self, name: str, pre_removed: int) -> tuple[int, int]:
        """The ratio caps are on the op's sparsity, so in groups they scale by elements / N."""
        groups = self.layouts[name].num_blocks
        hi = min(
            math.floor(self._groups_at(name, self.config.max_sparsity_ratio_per_op) + 1e-9), groups
        )
        lo = min(math.ceil(self._groups_at(name, self.config.min_sparsity_ratio_per_op) - 1e-9), hi)
        return max(lo, pre_removed), max(hi, pre_removed)

    def local_block_count(self, name: str, op: OpBlocks, target: float) -> int:
        """``round(target * elements / N)`` groups: the op's sparsity lands on the target."""
        return min(max(round(self._groups_at(name, target)), op.lo), op.hi)

    def removed_blocks(self, name: str, pre_mask: Tensor) -> Tensor:
        layout = self.layouts[name]
        assert isinstance(layout, GroupLayout)
        removed: Tensor = (~layout.grouped(pre_mask)).sum(dim=2)
        full: Tensor = removed >= int(self.params["n"])
        return full.reshape(-1)

    def expand_blocks(
        self, name: str, keep_blocks: Tensor, scores: Tensor, pre_mask: Tensor | None
    ) -> Tensor:
        layout = self.layouts[name]
        assert isinstance(layout, GroupLayout)
        grouped = layout.grouped(scores)
        if pre_mask is None:
            keys = grouped  # float comparisons order scores exactly (NaN was refused)
        else:  # weights already removed go first within their group: integer keys, sentinel
            keys = sortable_keys(grouped)
            keys[~layout.grouped(pre_mask.to(scores.device))] = removed_sentinel(keys)
        kept = _kept_in_groups(keys, self.params["n"])
        if not bool((~keep_blocks).all()):  # some groups stay dense
            kept |= keep_blocks.reshape(layout.rows, layout.groups, 1)
        return _place(layout, kept)

    def is_hardware_valid(self, name: str, mask: Tensor) -> bool:
        """Whether op ``name``'s mask is N:M in every group (what sparse tensor cores need):
        no dense edge and exactly N removed in every group of M."""
        layout = self.layouts.get(name)
        if not isinstance(layout, GroupLayout) or layout.groups * layout.m != layout.cols:
            return False
        removed = (~layout.grouped(mask)).sum(dim=2)
        return bool((removed == self.params["n"]).all())


_PAIRWISE_UP_TO = 8


def _kept_in_groups(keys: Tensor, n: int) -> Tensor:
    """Bool ``(rows, groups, m)``: False for the ``n`` lowest keys of every group (ties to
    the lower index), True for the others.

    Small groups (2:4, 4:8) rank each weight by comparing every pair of positions once: a
    weight's rank is how many of its group ranks below it, summed in byte vectors, one per
    position. Each comparison reads two strided columns and writes a contiguous vector, so
    the work is m(m-1)/2 comparisons of ``rows * groups`` elements, several times faster
    than a sort along a dim of 4. Larger groups sort."""
    m = keys.shape[-1]
    flat = keys.reshape(-1, m)
    if m > _PAIRWISE_UP_TO:
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


def _place(layout: GroupLayout, keep_groups: Tensor) -> Tensor:
    """Weight-shaped mask from per-weight keep decisions of the full groups."""
    if layout.groups * layout.m == layout.cols:
        return from_2d(keep_groups.reshape(layout.rows, layout.cols), layout.shape).contiguous()
    view = torch.ones((layout.rows, layout.cols), dtype=torch.bool, device=keep_groups.device)
    view[:, : layout.groups * layout.m] = keep_groups.reshape(layout.rows, -1)
    return from_2d(view, layout.shape).contiguous()


@hookimpl
def register_patterns(register: Register) -> None:
    register("N:M", NInMPattern)
