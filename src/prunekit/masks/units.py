"""Selecting units that span several ops: a channel with its producers' rows and its
consumers' columns, an attention head with its q, k, v rows and its output columns.

A virtual op (:class:`VirtualOp`) is a set of units, each made of slices of real ops'
weights (:class:`Piece`: positions of one dim of one op, and the unit each belongs to). A
unit scores by reducing every element it touches (mean, sum or max: ``criterion_reduce_type``);
each virtual op is handed to the engine as one op whose blocks are its units
(:class:`UnitLayout`, a unit weighing the weights it touches), so units are selected
exactly as blocks are: exact counts in weights, ties by index, local scope per virtual op,
global scope across them, caps per virtual op, pre-masks. Nothing is gathered element by
element: every piece is reduced along its other dims, and removed units are written back as
whole slices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.masks.engine import decide, masks
from prunekit.masks.geometry import Reduce
from prunekit.masks.numeric import working_dtype
from prunekit.masks.problem import Scope, Settings, build


@dataclass(frozen=True)
class Piece:
    """Positions of dim ``dim`` of op ``op``'s weight (as stored), each with its unit."""

    op: str
    dim: int
    positions: Tensor
    unit: Tensor


@dataclass(frozen=True)
class VirtualOp:
    """``units`` units made of ``pieces``."""

    units: int
    pieces: tuple[Piece, ...]


class UnitLayout:
    """A virtual op's units as blocks: the values handed in are per unit already; ``sizes``:
    the weights each unit touches (what a global target counts)."""

    def __init__(self, sizes: Tensor) -> None:
        self.num_blocks = sizes.numel()
        equal = self.num_blocks == 0 or bool((sizes == sizes[0]).all())
        self.block_size = int(sizes[0]) if self.num_blocks else 1
        self.sizes: Tensor | None = None if equal else sizes

    def reduce(self, values: Tensor, how: Reduce) -> Tensor:
        return values.reshape(-1)

    def expand(self, block_values: Tensor) -> Tensor:
        return block_values

    def removed(self, pre_mask: Tensor) -> Tensor:
        return ~pre_mask.reshape(-1)


def _rows(tensor: Tensor, piece: Piece) -> Tensor:
    """``(positions, elements)``: the piece's slices of ``tensor``, one row each."""
    index = piece.positions.to(tensor.device)
    picked = tensor.movedim(piece.dim, 0).index_select(0, index)
    return picked.reshape(index.numel(), -1)


def unit_scores(
    virtual: VirtualOp, scores: Mapping[str, Tensor], how: Reduce
) -> tuple[Tensor, Tensor]:
    """Per unit: its score (``how`` over every element it touches) and its element count."""
    dtype = working_dtype(scores[p.op].dtype for p in virtual.pieces)
    total = torch.zeros(virtual.units, dtype=dtype)
    count = torch.zeros(virtual.units, dtype=torch.int64)
    top = torch.full((virtual.units,), float("-inf"), dtype=dtype)
    for piece in virtual.pieces:
        rows = _rows(scores[piece.op], piece).to(dtype).cpu()
        total.index_add_(0, piece.unit, rows.sum(dim=1))
        count.index_add_(0, piece.unit, torch.full((rows.shape[0],), rows.shape[1]))
        top.scatter_reduce_(0, piece.unit, rows.amax(dim=1), reduce="amax")
    if how == "max":
        return top, count
    return (total if how == "sum" else total / count.clamp(min=1).to(dtype)), count


def unit_kept(virtual: VirtualOp, pre_masks: Mapping[str, Tensor]) -> Tensor:
    """Per unit: some element it touches is still kept by the pre-masks."""
    kept = torch.zeros(virtual.units, dtype=torch.int64)
    for piece in virtual.pieces:
        mask = pre_masks.get(piece.op)
        if mask is None:
            kept.index_fill_(0, piece.unit, 1)
            continue
        alive = _rows(mask, piece).any(dim=1).to(torch.int64).cpu()
        kept.scatter_reduce_(0, piece.unit, alive, reduce="amax")
    return kept.bool()


def unit_masks(
    virtual: Mapping[str, VirtualOp],
    shapes: Mapping[str, Sequence[int]],
    scores: Mapping[str, Tensor],
    target: float,
    *,
    scope: Scope,
    min_ratio: float,
    max_ratio: float,
    how: Reduce,
    pre_masks: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Masks of the real ops (shaped as ``shapes``; True = keep) when the units of every
    virtual op are selected at ``target``: each virtual op alone under local scope
    (``round(target * units)`` of them, within the caps), all together under global scope
    (``round(target * weights)`` of the weights the units touch, the lowest scores wherever
    they are; a weight two units touch, as a channel's row and another's column, counts for
    each). ``scores`` and ``pre_masks`` are the real ops', as stored."""
    live = {name: v for name, v in virtual.items() if v.units}
    values, layouts, weights = {}, {}, {}
    for name, v in live.items():
        values[name], sizes = unit_scores(v, scores, how)
        layouts[name] = UnitLayout(sizes)
        weights[name] = (int(sizes.sum()),)
    settings = Settings(
        scope, min_ratio, max_ratio, how, lambda name, t: round(t * layouts[name].num_blocks)
    )
    pre = {name: unit_kept(v, pre_masks) for name, v in live.items()} if pre_masks else None
    problem = build(weights, layouts, settings, values, target, pre)
    result = {op: torch.ones(tuple(shape), dtype=torch.bool) for op, shape in shapes.items()}
    for name, keep in masks(problem, decide(problem)):
        for piece in live[name].pieces:
            gone = piece.positions[~keep[piece.unit]]
            result[piece.op].index_fill_(piece.dim, gone, False)
    for op, mask in (pre_masks or {}).items():
        result[op] &= mask.to(result[op].device)
    return result
