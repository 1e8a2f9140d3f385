"""A pattern applied to one op column block by column block, for criteria that reconstruct.

SparseGPT decides each column block's mask from scores that include the updates of the
blocks before it, so the pattern is asked for masks one column block at a time: a pattern
built on an ``(out, width)`` Linear stands for the block, with the op's config (its scope:
``local`` gives each column block the target, ``per_output`` each row of it). That is the
op's own pattern only when the pattern's blocks on the whole op are exactly its blocks on
each column block: every block inside one column block (2:4 groups, 4x1 and 1x4 tiles, single
weights and whole columns), and the column block's layout the whole op's restricted to it.
:func:`check_columns` verifies that once per op shape, from the layouts alone, and refuses,
naming the pattern, one whose blocks span column blocks (whole rows, ``1xchannel``, a
plugin's diagonals across a wide weight).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from prunekit.errors import CalibrationError
from prunekit.masks.checks import refuse_nan
from prunekit.masks.geometry import BlockLayout
from prunekit.masks.groups import GroupLayout
from prunekit.masks.layouts import AxisLayout, GridLayout
from prunekit.masks.pattern import Pattern, PatternConfig


def column_pattern(
    pattern: Pattern, config: PatternConfig, name: str, rows: int, width: int
) -> Pattern:
    """``pattern``'s class on an ``(rows, width)`` Linear named ``name`` (its warnings about
    skipped ops were given for the whole op already)."""
    stand_in = nn.Linear(width, rows, bias=False, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return type(pattern)(config, {name: stand_in})


class ColumnSelector:
    """The ``select`` a reconstructing criterion calls: each column block's mask at
    ``target`` from its scores (what ``pre_mask``, the op's current ``(out, in)`` mask,
    removed stays removed), made by the pattern on a stand-in for the block and kept, so
    that :meth:`mask` gives the op's whole mask after. Where the pattern chooses groups of
    columns each by itself (N:M at N/M), ``sweep`` is their width and the masks are asked
    for group by group."""

    def __init__(
        self,
        pattern: Pattern,
        config: PatternConfig,
        name: str,
        target: float,
        pre_mask: Tensor | None,
    ) -> None:
        self.pattern, self.config, self.name = pattern, config, name
        self.target, self.pre_mask = target, pre_mask
        self.sweep = pattern.independent_column_width(name, target)
        self.built: dict[int, Pattern] = {}
        self.direct: dict[int, GroupLayout | None] = {}  # per width: see _sweep_groups
        self.parts: list[Tensor] = []

    def __call__(self, scores: Tensor, start: int) -> Tensor:
        rows, width = scores.shape
        if width not in self.built:
            self.built[width] = column_pattern(self.pattern, self.config, self.name, rows, width)
            self.direct[width] = self._sweep_groups(self.built[width])
        part = self.built[width]
        pre = None
        if self.pre_mask is not None:
            pre = self.pre_mask[:, start : start + width].to(scores.device)
        if self.name in part.skipped:
            keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
        elif (groups := self.direct[width]) is not None:
            keep = _every_group_pruned(groups, scores, pre, self.name)
        else:
            pres = None if pre is None else {self.name: pre}
            keep = part.get_masks({self.name: scores}, self.target, pre_masks=pres)[self.name]
        self.parts.append(keep)
        return keep

    def _sweep_groups(self, part: Pattern) -> GroupLayout | None:
        """The stand-in's N:M groups when the sweep asks for one group's mask at N/M
        (every group pruned, whatever the scores), else None. SparseGPT's 2:4 sweep asks
        this thousands of times per layer on ``(out, 4)`` scores, where building and solving
        a selection problem costs several times the mask itself; the mask is then the
        groups' own rule, the same as :meth:`Pattern.get_masks` gives (a test checks)."""
        if self.sweep is None or type(part).get_masks is not Pattern.get_masks:
            return None  # a pattern with masks of its own is always asked
        layout = part.layouts.get(self.name)
        if type(layout) is not GroupLayout or layout.groups * layout.m != layout.cols:
            return None
        return layout

    def mask(self) -> Tensor:
        """The op's ``(out, in)`` mask: the column blocks' masks side by side."""
        return torch.cat(self.parts, dim=1)


def _every_group_pruned(
    groups: GroupLayout, scores: Tensor, pre: Tensor | None, name: str
) -> Tensor:
    """The N:M mask of ``scores`` with every group pruned: the N lowest of each group
    removed (ties to the lower index), what ``pre`` removed first and still removed."""
    refuse_nan(name, scores)
    pruned = torch.zeros(groups.num_blocks, dtype=torch.bool, device=scores.device)
    keep = groups.expand_within(pruned, scores, pre)
    return keep if pre is None else keep & pre


def selector(
    pattern: Pattern, config: PatternConfig, name: str, target: float, pre_mask: Tensor | None
) -> ColumnSelector:
    """A :class:`ColumnSelector` for op ``name`` of ``pattern``."""
    return ColumnSelector(pattern, config, name, target, pre_mask)


def check_columns(
    pattern: Pattern, config: PatternConfig, name: str, layout: BlockLayout, blocksize: int
) -> None:
    """Refuse, naming the pattern, a pattern whose masks cannot be made column block by
    column block on op ``name`` (``layout``: its layout on the whole op)."""
    shape = pattern.shapes[name]
    rows, columns = shape[0], math.prod(shape[1:])
    if len(shape) != 2:
        raise CalibrationError(f"op {name!r}: reconstruction works on 2-D weights, got {shape}")
    if columns <= blocksize:
        return  # one column block: the pattern sees the whole op
    fits = _built_in_fits(layout, blocksize)
    if fits is None:
        fits = _blocks_match(pattern, config, name, layout, rows, columns, blocksize)
    if not fits:
        raise CalibrationError(
            f"pattern {config.pattern!r} cannot be applied column block by column block on "
            f"op {name!r} ({rows}x{columns}, column blocks of {blocksize}): its blocks span "
            "several column blocks (whole rows or wider), so a criterion that reconstructs "
            "(sparsegpt) cannot choose them; use a pattern whose blocks fit in a column block "
            "(1x1, N:M, NxM with M dividing blocksize), or criterion 'wanda'"
        )


def _built_in_fits(layout: BlockLayout, blocksize: int) -> bool | None:
    """Whether a built-in layout's blocks stay inside column blocks (None: not built in)."""
    if isinstance(layout, GroupLayout):
        return blocksize % layout.m == 0
    if isinstance(layout, GridLayout):
        return blocksize % layout.m == 0
    if isinstance(layout, AxisLayout):
        return 1 not in layout.span
    return None


def _blocks_match(
    pattern: Pattern, config: PatternConfig, name: str, layout: BlockLayout, rows: int,
    columns: int, blocksize: int,
) -> bool:  # fmt: skip
    """For any other layout: every block lies in one column block (the ``max`` of the column
    block index over a block equals its minimum), and each column block's layout makes the
    same blocks as the whole op's there (the same sums of random scores over its blocks)."""
    index = (torch.arange(columns) // blocksize).to(torch.float32).expand(rows, columns)
    highest = layout.reduce(index.contiguous(), "max").reshape(-1)
    lowest = -layout.reduce(-index.contiguous(), "max").reshape(-1)
    if not bool((highest == lowest).all()):
        return False
    scores = torch.rand(rows, columns, generator=torch.Generator().manual_seed(0))
    sums = layout.reduce(scores, "sum").reshape(-1)
    for block, start in enumerate(range(0, columns, blocksize)):  # once per op shape
        stop = min(start + blocksize, columns)
        part = column_pattern(pattern, config, name, rows, stop - start).layouts.get(name)
        mine = torch.sort(sums[highest == block]).values
        if part is None:
            return mine.numel() == 0
        theirs = torch.sort(part.reduce(scores[:, start:stop].contiguous(), "sum")).values
        if mine.shape != theirs.reshape(-1).shape or not torch.allclose(mine, theirs, rtol=1e-5):
            return False
    return True
