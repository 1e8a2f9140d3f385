"""The op types of the counting engine: one op's block scores, caps and place, and the table
of every op of a global selection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class ScoredOp:
    """One op (or one rank's row shard of it) as the counting engine sees it.

    ``values``: 1-D block scores (any float dtype; blocks a pre-mask removed already at
    -inf), or a function that computes them anew each time, so that a model too large for
    all its scores at once is handled one op at a time. ``size``: elements per block.
    ``lo``/``hi``: blocks the whole op must / may remove. ``count``: blocks of this part.
    """

    values: Tensor | Callable[[], Tensor]
    size: int
    lo: int
    hi: int
    count: int = -1
    op: int = -1  # op id: ties between ops go to the lower id
    offset: int = 0  # index of this part's first block in the whole op (row shards)
    whole: int = -1  # blocks of the whole op (all parts)
    device: torch.device | None = None  # where the scores live, when ``values`` is a function

    def __post_init__(self) -> None:
        if self.count < 0:
            if callable(self.values):
                raise ValueError("ScoredOp: give count when values is a function")
            self.count = self.values.numel()
        if self.device is None and not callable(self.values):
            self.device = self.values.device
        if self.whole < 0:
            self.whole = self.count

    def get(self) -> Tensor:
        """The block scores (computed now if ``values`` is a function)."""
        return self.values() if callable(self.values) else self.values

    def where(self) -> torch.device:
        """The scores' device (read from the scores when not given)."""
        return self.device if self.device is not None else self.get().device


@dataclass
class OpTable:
    """What is known of every op of a global selection, one row per op in op-id order
    (identical on every rank of a multi-rank selection)."""

    ids: Tensor  # op ids, ascending
    blocks: Tensor  # blocks of the whole op
    size: Tensor  # elements per block
    lo: Tensor
    hi: Tensor

    @classmethod
    def from_rows(cls, rows: Tensor) -> OpTable:
        """From ``(op, whole, size, lo, hi)`` rows already in op-id order, one per op."""
        columns = rows.t().contiguous()
        return cls(columns[0], columns[1], columns[2], columns[3], columns[4])

    def position(self, op_ids: Tensor) -> Tensor:
        """The rows of ``op_ids``."""
        return torch.searchsorted(self.ids, op_ids)

    @property
    def reachable(self) -> int:
        """The most elements the caps let all ops remove together."""
        return int((self.hi * self.size).sum())

    @property
    def floor(self) -> int:
        """The elements the ops must remove together (their lower caps)."""
        return int((self.lo * self.size).sum())

    @property
    def total(self) -> int:
        """Every op's elements."""
        return int((self.blocks * self.size).sum())


def op_rows(ops: Sequence[ScoredOp]) -> Tensor:
    """``(op, whole, size, lo, hi)`` per op part, as an int64 ``(parts, 5)`` tensor."""
    return torch.tensor(
        [[op.op, op.whole, op.size, op.lo, op.hi] for op in ops], dtype=torch.int64
    ).reshape(-1, 5)


def numbered(ops: Sequence[ScoredOp]) -> list[ScoredOp]:
    """Ops of one process, numbered by their position (ties between ops: the earlier one)."""
    return [replace(op, op=i) for i, op in enumerate(ops)]
