"""Channel labels: which channel each position of a tensor carries, and channels tied together.

Every output channel a layer makes (a Linear's output feature, a conv's filter) gets a
channel id. A tensor's :class:`Label` says, for the dims that carry channels, which id each
position holds: one dim for a conv's activations ``(N, C, H, W)``, two for attention heads
``(B, H, T, D)`` after a reshape. Shape ops (view, transpose, cat, slice...) move labels by
applying the same op to a tensor of ids (:func:`moved`), so every reshape is followed
exactly. Ops that combine tensors position by position (a residual add, a gated product,
attention's q·k) tie the ids they meet: a :class:`Ties` union-find keeps which channels
must be removed together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Label:
    """Channel ids over the ``dims`` of a tensor: ``index`` is shaped like those dims."""

    dims: tuple[int, ...]
    index: Tensor

    def channel_map(self, shape: Sequence[int]) -> Tensor:
        """The ids as a tensor of the labelled tensor's whole ``shape`` (other dims
        broadcast), to apply shape ops to."""
        view = [1] * len(shape)
        for d, size in zip(self.dims, self.index.shape, strict=True):
            view[d] = size
        return self.index.reshape(view).expand(*shape).contiguous()

    def ids(self) -> Tensor:
        """Every id this label carries (flat)."""
        return self.index.reshape(-1)

    def along(self, dim: int) -> Tensor | None:
        """The ids along ``dim`` when it is the only labelled dim, else None."""
        return self.index if self.dims == (dim,) else None


def compressed(ids: Tensor) -> Label | None:
    """The label of a tensor whose ids at every position are ``ids`` (a whole-shape id map):
    the dims along which ids vary are the labelled ones. None when no dim varies (a single
    channel's values: the caller treats that as leaving channel structure)."""
    varying = tuple(
        d
        for d in range(ids.dim())
        if ids.shape[d] > 1 and not bool((ids == ids.narrow(d, 0, 1)).all())
    )
    if not varying:
        return None
    index = ids
    for d in reversed(range(ids.dim())):
        if d not in varying:
            index = index.select(d, 0)
    return Label(varying, index.contiguous())


def moved(label: Label, shape: Sequence[int], op: Callable[[Tensor], object]) -> object:
    """Apply shape op ``op`` to ``label``'s id map (of a tensor of ``shape``): a tensor of ids,
    or a tuple of them for ops that split."""
    return op(label.channel_map(shape))


class Ties:
    """Channel ids and which of them are tied (must be removed together): a union-find over
    ids handed out by :meth:`fresh`."""

    def __init__(self) -> None:
        self.parent = torch.zeros(0, dtype=torch.int64)

    def fresh(self, count: int) -> Tensor:
        """``count`` new ids, each its own class."""
        start = self.parent.numel()
        self.parent = torch.cat([self.parent, torch.arange(start, start + count)])
        return torch.arange(start, start + count)

    def find(self, ids: Tensor) -> Tensor:
        """The class (root id) of every id."""
        roots = ids.clone()
        while True:
            up = self.parent[roots]
            if bool((up == roots).all()):
                return roots
            roots = up

    def tie(self, a: Tensor, b: Tensor) -> None:
        """Tie ``a[i]`` to ``b[i]`` for every i (same shapes)."""
        left, right = self.find(a.reshape(-1)), self.find(b.reshape(-1))
        while True:
            differ = left != right
            if not bool(differ.any()):
                return
            low = torch.minimum(left, right)[differ]
            high = torch.maximum(left, right)[differ]
            self.parent[high] = low  # the later id joins the earlier one's class
            left, right = self.find(left), self.find(right)

    def tie_all(self, ids: Tensor) -> None:
        """Tie every id of ``ids`` to one another."""
        flat = ids.reshape(-1)
        if flat.numel() > 1:
            self.tie(flat[:-1], flat[1:])

    def classes(self) -> Tensor:
        """The root of every id handed out."""
        return self.find(torch.arange(self.parent.numel()))
