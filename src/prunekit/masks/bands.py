"""Per-output selection (``pruning_scope: "per_output"``): every output row of every op
reaches the target alone, as Wanda compares weights.

An op's blocks are grouped by the band of output rows they cover (dim 0 of the ``(out, in,
...)`` view patterns lay blocks on): one row for unstructured weights, N:M groups and 1xM
tiles; ``n`` rows for ``n x M`` tiles; every row for blocks that span the output dim
(``channelx1``, a Linear's ``column``, a plugin's block diagonals). Each band is selected as
an op is under local scope: ``round(target * its blocks)`` of them (N:M: in units of N
removed weights), within the per-op caps scaled to the band, ties to the lower block index,
blocks a pre-mask removed going first and counting. Blocks that cover their band's rows
evenly (tiles, groups, whole columns) remove the same count from every row of it, so every
row reaches the target exactly.

All bands of an op are selected at once, as a selection along the rows of a ``(bands, blocks
per band)`` matrix of block scores (numpy's partition along rows), never a loop over rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.errors import IndivisibleShapeError
from prunekit.masks.geometry import BlockLayout, Reduce, blocks_at, removed_blocks
from prunekit.masks.groups import GroupLayout
from prunekit.masks.layouts import AxisLayout, GridLayout
from prunekit.masks.limits import block_caps_per_band
from prunekit.masks.numeric import lowest_key, sortable_keys
from prunekit.masks.problem import block_values
from prunekit.masks.select.kernels import row_kth_smallest, row_sorted


@dataclass(frozen=True)
class Bands:
    """How an op's blocks group into output row bands.

    ``order`` is None when the blocks are numbered band by band, ``width`` to a band (the
    built-in layouts): the flat block scores then reshape to ``(count, width)``. Otherwise
    it is ``(count, width)`` block indices, each band's in ascending order, padded with -1
    where a band has fewer blocks than the widest."""

    count: int
    width: int
    order: Tensor | None = None

    def sizes(self) -> Tensor:
        """Blocks per band, ``(count,)``."""
        if self.order is None:
            return torch.full((self.count,), self.width, dtype=torch.int64)
        return (self.order >= 0).sum(dim=1)

    def arrange(self, values: Tensor, fill: float | int) -> Tensor:
        """The 1-D block ``values`` as ``(count, width)``, padding set to ``fill``."""
        if self.order is None:
            return values.reshape(self.count, self.width)
        index = self.order.clamp(min=0).to(values.device)
        arranged = values[index]
        arranged[self.order.to(values.device) < 0] = fill
        return arranged

    def flatten(self, per_band: Tensor, num_blocks: int) -> Tensor:
        """``(count, width)`` values back to the 1-D block order (padding dropped)."""
        if self.order is None:
            return per_band.reshape(-1)
        flat = torch.empty(num_blocks, dtype=per_band.dtype, device=per_band.device)
        real = self.order >= 0
        flat[self.order[real].to(per_band.device)] = per_band[real.to(per_band.device)]
        return flat


def row_bands(name: str, layout: BlockLayout, shape: tuple[int, ...]) -> Bands:
    """The output row bands of op ``name``'s blocks (``shape``: the ``(out, in, ...)`` view
    its layout was made for). Built-in layouts are read from their geometry; any other
    layout from the rows its ``reduce`` finds in each block."""
    if layout.sizes is not None:
        raise IndivisibleShapeError(
            f"op {name!r}: pruning_scope 'per_output' needs blocks of one size, but its "
            "weight does not divide into whole blocks (partial edge blocks); use "
            "indivisible='skip' to leave it out, or pruning_scope 'local'"
        )
    if isinstance(layout, GroupLayout):
        return Bands(layout.rows, layout.groups)
    if isinstance(layout, GridLayout):
        return Bands(layout.grid[0], layout.grid[1])
    if isinstance(layout, AxisLayout):
        if 0 in layout.span:
            return Bands(1, layout.num_blocks)
        return Bands(shape[0], layout.num_blocks // max(shape[0], 1))
    return _bands_from_reduce(name, layout, shape)


def _bands_from_reduce(name: str, layout: BlockLayout, shape: tuple[int, ...]) -> Bands:
    """Bands of a layout prunekit does not know: each block's first and last row (its
    ``reduce`` of the row index, ``max`` of it and of its negation); blocks with the same
    rows form a band, and bands that overlap without being equal are refused."""
    rows = torch.arange(shape[0], dtype=torch.float32).reshape(-1, *[1] * (len(shape) - 1))
    index = rows.expand(shape).contiguous()
    last = layout.reduce(index, "max").reshape(-1).to(torch.int64)
    first = (-layout.reduce(-index, "max")).reshape(-1).to(torch.int64)
    del index
    spans, band = torch.unique(first * shape[0] + last, return_inverse=True)
    starts, ends = spans // shape[0], spans % shape[0]
    if spans.numel() > 1 and bool((starts[1:] <= ends[:-1]).any()):
        raise IndivisibleShapeError(
            f"op {name!r}: pruning_scope 'per_output' needs blocks that group into bands of "
            f"output rows, but {type(layout).__name__}'s blocks cover overlapping row ranges; "
            "use pruning_scope 'local' or 'global'"
        )
    counts = torch.bincount(band, minlength=spans.numel())
    width = int(counts.max())
    by_band = torch.sort(band, stable=True).indices  # blocks band by band, ascending
    starts_at = torch.cumsum(counts, 0) - counts
    slot = torch.arange(band.numel()) - starts_at[band[by_band]]
    order = torch.full((spans.numel(), width), -1, dtype=torch.int64)
    order[band[by_band], slot] = by_band
    return Bands(spans.numel(), width, order)


def per_output_keep(
    name: str,
    layout: BlockLayout,
    shape: tuple[int, ...],
    scores: Tensor,
    pre_mask: Tensor | None,
    target: float,
    caps: tuple[float, float],
    how: Reduce,
) -> Tensor:
    """1-D bool per block of op ``name`` (True = keep): every output row band of the op
    reaches ``target`` alone (see the module's docstring). ``caps``: the per-op min and max
    ratios, which bind each band as they bind an op."""
    bands = row_bands(name, layout, shape)
    per_band = math.prod(shape) // max(bands.count, 1)
    if bands.width == 1 and layout.block_size == per_band > 1:
        raise IndivisibleShapeError(
            f"op {name!r}: pruning_scope 'per_output' compares blocks within each output "
            "row, but this pattern's blocks are whole rows (one block per row: each row "
            "would keep or lose all its weights); use pruning_scope 'local' or 'global'"
        )
    values = block_values(name, layout, scores, how)
    removed = None if pre_mask is None else removed_blocks(layout, pre_mask.to(values.device))
    sizes = bands.sizes()
    pre = (
        torch.zeros(bands.count, dtype=torch.int64)
        if removed is None
        else bands.arrange(removed, False).sum(dim=1).cpu()
    )
    share = sizes.to(torch.float64) / max(layout.num_blocks, 1)
    lo, hi = block_caps_per_band(
        sizes, blocks_at(layout, caps[1]) * share, blocks_at(layout, caps[0]) * share, pre
    )
    # torch.round rounds half to even, as Python's round does for every other scope.
    wanted = torch.round(blocks_at(layout, target) * share).to(torch.int64)
    counts = torch.minimum(torch.maximum(wanted, lo), hi)
    if removed is not None and bool(removed.any()):
        keys = sortable_keys(values)
        keys[removed] = lowest_key(keys)
        arranged = bands.arrange(keys, int(torch.iinfo(keys.dtype).max))
    else:
        arranged = bands.arrange(values, float("inf"))
    gone = lowest_per_row(arranged, counts.to(arranged.device))
    return ~bands.flatten(gone, layout.num_blocks)


def lowest_per_row(values: Tensor, counts: Tensor) -> Tensor:
    """Bool ``(rows, width)``: True for the ``counts[r]`` lowest values of every row ``r``
    of the 2-D ``values``, ties to the lower column. One selection along the rows when
    every count is the same (the usual case), a sort along the rows otherwise."""
    rows, width = values.shape
    if rows == 0 or width == 0:
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    least, most = int(counts.min()), int(counts.max())
    if least == most and least in (0, width):
        return torch.full(values.shape, least == width, dtype=torch.bool, device=values.device)
    if least == most:
        kth = row_kth_smallest(values, least).to(values.device)
    else:
        at = (counts - 1).clamp(min=0).reshape(-1, 1)
        kth = row_sorted(values).to(values.device).gather(1, at)
    below = values < kth
    ties = values == kth
    need = counts.reshape(-1, 1) - below.sum(dim=1, keepdim=True)
    excess = (ties.sum(dim=1, keepdim=True) > need).reshape(-1)
    gone = below | ties
    if bool(excess.any()):  # rows where more values tie at the k-th than are needed
        tied = ties[excess]
        first = tied & (torch.cumsum(tied, dim=1) <= need[excess])
        gone[excess] = below[excess] | first
    return gone
