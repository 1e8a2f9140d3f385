"""The ``"block_diagonal"`` pattern: prune whole cyclic block diagonals of a G x G tile grid.

Why this structure: tile INC's 2-D view of a weight into a G x G grid and call the tiles
``(r, (r + d) mod G)`` for ``r in range(G)`` *diagonal d*. Every diagonal holds exactly one
tile of each tile-row and one of each tile-column, so whatever set of diagonals is kept,
every tile-row and tile-column keeps the same number of tiles (load balance for free), and
``W @ x`` becomes a sum over kept diagonals of one block-diagonal (grouped) matmul each, with
the input's tile-columns rolled by ``d``. No built-in covers this: NxM removes tiles one by one.

Shapes (``R x C`` is the 2-D view: Linear ``(out, in)``, Conv ``(out, prod(kernel) * in)``):

* tiles are ``ceil(R/G) x ceil(C/G)``, i.e. the view is zero-padded to a multiple of the tile
  size, exactly as :class:`~prunekit.patterns.GridLayout` does; edge tiles may be partial,
  and trailing tile-rows or tile-columns may be *all* padding (``R=6, G=4``: heights 2, 2, 2,
  0). The balance holds on that padded G x G grid, the one a grouped kernel would run on;
* a view smaller than the grid (``R < G`` or ``C < G``) uses ``G_eff = min(G, R, C)``
  diagonals, so that no tile-row or tile-column is empty by construction. With ``R, C >= G``
  more than half of the tile-rows and of the tile-columns hold data, so every diagonal holds
  at least one element and a diagonal's mean is always defined;
* a view that G does not divide (including every view smaller than the grid) follows
  ``indivisible``: ``'partial'`` as above, ``'skip'`` the op, or ``'raise'``.
"""

from __future__ import annotations

import math

import prunekit
import torch
import torch.nn.functional as F
from prunekit.masks import BlockLayout, GridLayout, Reduce
from pydantic import Field
from torch import Tensor, nn

__all__ = ["BlockDiagonalOptions", "BlockDiagonalPattern", "DiagonalLayout", "register_patterns"]


class DiagonalLayout:
    """The cyclic block diagonals of a ``G x G`` tile grid on the 2-D view of ``shape``.

    Block ``d`` (``0 <= d < num_blocks``) is diagonal d: tiles ``(r, (r + d) mod G)``.
    Scores reduce per tile first (through :class:`GridLayout`), then per diagonal through
    precomputed index tensors, so nothing loops over elements, tiles or diagonals.
    ``indivisible_reason`` says when ``blocks`` does not divide the view; prunekit then
    applies the pattern's ``indivisible`` option (partial tiles, skip, or raise).
    """

    partial_edges = "partial edge tiles, min(blocks, rows, cols) diagonals"

    def __init__(self, shape: tuple[int, ...], blocks: int) -> None:
        self.shape = tuple(shape)
        self.rows = shape[0]
        self.cols = math.prod(shape[1:]) if len(shape) > 1 else 1
        if min(self.rows, self.cols) < 1 or blocks < 1:
            raise ValueError(
                f"DiagonalLayout needs a non-empty weight and blocks >= 1, got "
                f"shape {self.shape} and blocks={blocks}"
            )
        self.requested_blocks = blocks
        self.indivisible_reason: str | None = (
            None
            if self.rows % blocks == 0 and self.cols % blocks == 0
            else f"its 2-D view ({self.rows}, {self.cols}) does not divide into a "
            f"{blocks} x {blocks} grid"
        )
        g = min(blocks, self.rows, self.cols)
        self.num_blocks = g
        self.tile = (math.ceil(self.rows / g), math.ceil(self.cols / g))
        self.tiles = GridLayout(self.shape, *self.tile)
        # Tiles that hold data; the rest of the g x g grid is padding (zero-height/width).
        self.data_grid: tuple[int, int] = self.tiles.grid
        a, b = self.data_grid

        pos = torch.arange(g)
        # [d, r]: tile-row r and tile-column (r + d) mod g of diagonal d, in the padded grid.
        self._diag_rows = pos.expand(g, g).contiguous()
        self._diag_cols = (pos[:, None] + pos[None, :]) % g
        # The diagonal of each data tile, row-major like GridLayout's blocks.
        diagonal_of_tile = (torch.arange(b)[None, :] - torch.arange(a)[:, None]) % g
        self._tile_diagonal = diagonal_of_tile.reshape(-1)

        heights = (self.rows - pos * self.tile[0]).clamp(0, self.tile[0])
        widths = (self.cols - pos * self.tile[1]).clamp(0, self.tile[1])
        tile_sizes = torch.outer(heights, widths)
        self._all_sizes = tile_sizes[self._diag_rows, self._diag_cols].sum(dim=1)
        equal = bool((self._all_sizes == self._all_sizes[0]).all())
        self.sizes: Tensor | None = None if equal else self._all_sizes
        # With equal diagonals block_size is their real size (the base class counts elements
        # with it); otherwise only ``sizes`` is used and this is the padded, nominal size.
        self.block_size = int(self._all_sizes[0]) if equal else g * self.tile[0] * self.tile[1]

    def reduce(self, values: Tensor, how: Reduce) -> Tensor:
        """Weight-shaped ``values`` -> ``(num_blocks,)``: each diagonal's mean, sum or max."""
        g = self.num_blocks
        a, b = self.data_grid
        tile_how: Reduce = "max" if how == "max" else "sum"
        per_tile = self.tiles.reduce(values, tile_how).reshape(a, b)
        fill = float("-inf") if how == "max" else 0.0
        grid = F.pad(per_tile, (0, g - b, 0, g - a), value=fill)
        device = grid.device
        per_diagonal = grid[self._diag_rows.to(device), self._diag_cols.to(device)]
        if how == "max":
            return per_diagonal.amax(dim=1)
        total = per_diagonal.sum(dim=1)
        if how == "sum":
            return total
        # Mean over the diagonal's elements, so diagonals of different sizes compare fairly.
        return total / self._all_sizes.to(device=device, dtype=total.dtype)

    def expand(self, block_values: Tensor) -> Tensor:
        """``(num_blocks,)`` -> weight-shaped, each element taking its diagonal's value."""
        per_tile = block_values[self._tile_diagonal.to(block_values.device)]
        return self.tiles.expand(per_tile)

    def diagonal_index(self) -> Tensor:
        """The diagonal of every element, weight-shaped (for reports, tests and kernels)."""
        return self.expand(torch.arange(self.num_blocks))

    def __repr__(self) -> str:
        return (
            f"DiagonalLayout(shape={self.shape}, view=({self.rows}, {self.cols}), "
            f"blocks={self.num_blocks}, tile={self.tile})"
        )


class BlockDiagonalOptions(prunekit.BlockOptions):
    """``block_diagonal``'s options; the inherited ones (criterion_reduce_type, indivisible)
    apply per diagonal."""

    blocks: int = Field(
        4,
        ge=2,
        le=4096,
        description="G: the 2-D view is tiled into a G x G grid and each op "
        "has G cyclic block diagonals to keep or remove (the groups of the block-diagonal "
        "matmuls). A view smaller than the grid uses min(G, rows, cols).",
    )


class BlockDiagonalPattern(prunekit.Pattern):
    """Removes whole cyclic block diagonals of a G x G tile grid, so every tile-row and
    tile-column keeps the same number of tiles (a sum of block-diagonal matmuls)."""

    description = (
        "whole cyclic block diagonals of a G x G tile grid on INC's (out, kernel*in) "
        "view; every tile-row/column keeps the same number of tiles"
    )
    family = "structured (example plugin)"
    Options = BlockDiagonalOptions
    module_types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

    def layout(self, name: str, module: nn.Module) -> BlockLayout | None:
        shape = self.shapes[name]
        rows, cols = shape[0], math.prod(shape[1:])
        if rows == 0 or cols == 0:
            self.skip(name, f"its 2-D view ({rows}, {cols}) is empty")
            return None
        return DiagonalLayout(shape, self.options.blocks)


@prunekit.hookimpl
def register_patterns(register: prunekit.Register) -> None:
    """prunekit calls this once when it loads the plugin's entry point."""
    register("block_diagonal", BlockDiagonalPattern)
