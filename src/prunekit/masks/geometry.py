"""What a block layout is, and the one place its optional members are read.

A :class:`BlockLayout` says how one weight splits into blocks: it turns a weight-shaped
tensor into one value per block (``reduce``) and a per-block keep decision back into a
weight-shaped mask (``expand``). That is all a layout must have. The engine counts, breaks
ties, applies caps and scopes; the layout only describes geometry.

A layout may also have these members; the functions below read them, with the defaults
that fit every layout whose blocks remove all their elements:

``indivisible_reason: str | None``
    Why the weight does not divide into whole blocks (None: it does). The pattern's
    ``indivisible`` option then decides: partial edge blocks, skip the op, or raise.
``partial_edges: str``
    What ``indivisible="partial"`` does on this layout, for that error (default "edge
    blocks").
``blocks_at(ratio) -> float``
    How many blocks make the op ``ratio`` sparse (default ``ratio * num_blocks``); caps and
    local counts are taken from it. N:M groups remove N of every M weights, so there it is
    ``ratio * elements / N``.
``removed(pre_mask) -> Tensor``
    1-D bool per block: blocks a pre-mask already removed (default: all their elements,
    found through ``reduce(mask, "max")``; a layout whose ``reduce`` does not reduce values,
    such as a norm or random draws, defines this itself).
``expand_within(keep_blocks, scores, pre_mask) -> Tensor``
    The mask, when a removed block loses only some of its elements, chosen by their scores
    (N:M: the N lowest of each pruned group). Default: :meth:`BlockLayout.expand`.
``hardware_valid(mask) -> bool``
    Whether a mask has the layout sparse hardware needs (default: not applicable).
``limit_note: str``
    What limits how much of the op the blocks can remove, in words, for errors (N:M: "at
    most N of every M weights"; default: the block count and size).
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import Tensor

Reduce = Literal["mean", "sum", "max"]


class BlockLayout(Protocol):
    """The contract every block layout keeps (flat block order defines tie-breaking)."""

    num_blocks: int
    block_size: int  # nominal elements per block
    sizes: Tensor | None  # elements per block (1-D) when blocks differ in size, else None

    def reduce(self, values: Tensor, how: Reduce) -> Tensor:
        """Weight-shaped ``values`` -> 1-D ``(num_blocks,)``, reduced over each block."""
        ...

    def expand(self, block_values: Tensor) -> Tensor:
        """1-D ``(num_blocks,)`` -> weight-shaped, each element taking its block's value."""
        ...


def indivisible_reason(layout: BlockLayout) -> str | None:
    """Why ``layout``'s weight does not divide into whole blocks, or None."""
    reason: str | None = getattr(layout, "indivisible_reason", None)
    return reason


def partial_edges(layout: BlockLayout) -> str:
    """What ``indivisible="partial"`` does on ``layout`` (for error messages)."""
    text: str = getattr(layout, "partial_edges", "edge blocks")
    return text


def blocks_at(layout: BlockLayout, ratio: float) -> float:
    """How many of ``layout``'s blocks make its op ``ratio`` sparse."""
    custom = getattr(layout, "blocks_at", None)
    if custom is not None:
        return float(custom(ratio))
    return ratio * layout.num_blocks


def removed_blocks(layout: BlockLayout, pre_mask: Tensor) -> Tensor:
    """1-D bool per block of ``layout``: the blocks ``pre_mask`` (weight-shaped, True =
    keep) already removed."""
    custom = getattr(layout, "removed", None)
    if custom is not None:
        found: Tensor = custom(pre_mask)
        return found
    return layout.reduce(pre_mask.to(torch.float32), "max") <= 0


def expand_keep(
    layout: BlockLayout, keep_blocks: Tensor, scores: Tensor, pre_mask: Tensor | None
) -> Tensor:
    """Weight-shaped bool mask from the 1-D keep decision per block of ``layout``."""
    custom = getattr(layout, "expand_within", None)
    if custom is not None:
        mask: Tensor = custom(keep_blocks, scores, pre_mask)
        return mask
    return layout.expand(keep_blocks)


def hardware_valid(layout: BlockLayout, mask: Tensor) -> bool | None:
    """Whether ``mask`` has the layout sparse hardware needs; None where that does not
    apply to ``layout``."""
    custom = getattr(layout, "hardware_valid", None)
    return None if custom is None else bool(custom(mask))


def limit_note(layout: BlockLayout) -> str:
    """What limits how much of an op ``layout``'s blocks can remove, in words."""
    note: str | None = getattr(layout, "limit_note", None)
    if note is not None:
        return note
    if layout.sizes is not None:
        return f"{layout.num_blocks} blocks, some partial"
    return f"{layout.num_blocks} blocks of {layout.block_size}"


def removable_elements(layout: BlockLayout, hi: int) -> int:
    """The most elements an op may lose when it removes at most ``hi`` blocks: its ``hi``
    largest blocks (an upper bound of what a global target can take from it)."""
    if layout.sizes is None:
        return hi * layout.block_size
    return int(torch.sort(layout.sizes, descending=True).values[:hi].sum())
