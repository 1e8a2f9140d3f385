"""Coupled pruning: a structured pattern's channels chosen per class of tied channels.

With ``coupled: true`` and example inputs, the model is traced once
(:mod:`prunekit.slim.flow`); every output channel a selected op makes (or input channel it
reads, for patterns that remove inputs) belongs to a class of channels that must be removed
together: a conv's filters with the BatchNorm after it and the next conv's input channels,
a residual stream's channels across every block that writes to it. Each class is one unit,
scored over every weight it touches (its producers' rows and its consumers' columns) and
removed whole, in every op it touches, so that everything coupled pruning removes can be
slimmed (``pk.slim``) into a model that computes the same function. Classes are grouped by
the ops that make them (one dependency group each): local scope gives each group the
target, global scope compares them all; caps apply per group, counted in weights.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.errors import PrunekitError
from prunekit.masks.checks import check_inputs
from prunekit.masks.limits import check_target
from prunekit.masks.pattern import Masks, Pattern, PatternConfig
from prunekit.masks.units import Piece, VirtualOp, unit_masks
from prunekit.slim.flow import Flow


class CouplingError(PrunekitError, ValueError):
    """A coupled config whose pattern does not remove whole channels, or without inputs."""


class CoupledPattern(Pattern):
    """``base``'s choices made per class of tied channels (see the module's docstring).
    ``ops``: every op a class touches (the config's and the ops tied to them), as stored."""

    def __init__(
        self, config: PatternConfig, base: Pattern, flow: Flow, modules: Mapping[str, nn.Module]
    ) -> None:
        self.config, self.base = config, base
        self.options, self.params = base.options, base.params
        self.skipped: dict[str, str] = {}
        self.layouts = {}
        self.transposed: set[str] = set()
        self.groups = _groups(base, flow, self.skipped)
        touched = {p.op for v in self.groups.values() for p in v.pieces}
        order = [*base.shapes, *sorted(touched - set(base.shapes))]
        self.ops: dict[str, nn.Module] = {name: modules[name] for name in order}
        self.weight_shapes = {n: tuple(_weight(m).shape) for n, m in self.ops.items()}
        self.shapes = dict(self.weight_shapes)
        self.module_kinds = {n: type(m).__name__ for n, m in self.ops.items()}

    def get_masks(
        self,
        scores: Mapping[str, Tensor],
        target_sparsity: float,
        pre_masks: Mapping[str, Tensor] | None = None,
    ) -> Masks:
        """Masks of every op a chosen class touches (True = keep)."""
        target = check_target(target_sparsity, self.config.max_sparsity_ratio_per_op)
        check_inputs(self.weight_shapes, scores, pre_masks)
        return unit_masks(
            self.groups,
            self.weight_shapes,
            scores,
            target,
            scope="local" if self.config.pruning_scope == "local" else "global",
            min_ratio=self.config.min_sparsity_ratio_per_op,
            max_ratio=self.config.max_sparsity_ratio_per_op,
            how=getattr(self.options, "criterion_reduce_type", "mean"),
            pre_masks=pre_masks,
        )

    def unreachable(self, target: float, what: str = "target_sparsity") -> Any:
        return None  # the engine refuses an unreachable target, counted in weights

    def __repr__(self) -> str:
        return f"CoupledPattern({self.base!r}, groups={len(self.groups)})"


def _weight(module: nn.Module) -> Tensor:
    weight = getattr(module, "weight", None)
    assert isinstance(weight, Tensor)
    return weight


def _owner(name: str) -> str:
    return name.rpartition(".")[0]


def _groups(base: Pattern, flow: Flow, skipped: dict[str, str]) -> dict[str, VirtualOp]:
    """The virtual ops: the classes the config's ops make (or read), grouped by the set of
    ops that make them."""
    roots = flow.ties.classes()
    pinned: dict[int, str] = {}
    for ids, why in flow.pins:
        for root in torch.unique(roots[ids]).tolist():
            pinned.setdefault(root, why)
    by_weight = {(m.name, m.role): m for m in flow.members if m.role != "follower"}
    chosen: set[int] = set()
    for name in base.shapes:
        side = base.channel_side(name)
        if side is None:
            raise CouplingError(
                f"coupled: pattern {base.config.pattern!r} does not remove whole channels of op "
                f"{name!r}: coupled pruning needs a pattern that does (filter, 1xchannel, "
                "channelx1 on a Linear, row, column, ln_structured with dim 0 or 1, head, or a "
                "plugin pattern whose channel_side() says 'out' or 'in')"
            )
        member = by_weight.get((f"{name}.weight", "producer" if side == "out" else "consumer"))
        if member is None:
            skipped[name] = "its channels do not reach anything the trace follows"
            continue
        for root in torch.unique(roots[member.ids]).tolist():
            if root in pinned:
                skipped.setdefault(name, f"some of its channels stay: {pinned[root]}")
            else:
                chosen.add(root)
    return _virtual_ops(flow, roots, chosen)


def _virtual_ops(flow: Flow, roots: Tensor, chosen: set[int]) -> dict[str, VirtualOp]:
    """One virtual op per set of producers; a unit per chosen class; pieces from every
    producer and consumer member of it."""
    makers: dict[int, set[str]] = defaultdict(set)
    for member in flow.members:
        if member.role == "producer":
            for root in set(roots[member.ids].tolist()) & chosen:
                makers[root].add(_owner(member.name))
    keys = {root: tuple(sorted(ops)) for root, ops in makers.items()}
    group_of = torch.full((roots.numel(),), -1, dtype=torch.int64)  # class root -> group
    unit_of = torch.full((roots.numel(),), -1, dtype=torch.int64)  # class root -> its unit
    numbered: dict[tuple[str, ...], int] = {}
    counts: list[int] = []
    for root in sorted(keys):
        group = numbered.setdefault(keys[root], len(numbered))
        if group == len(counts):
            counts.append(0)
        group_of[root], unit_of[root] = group, counts[group]
        counts[group] += 1
    pieces: list[list[Piece]] = [[] for _ in numbered]
    for member in flow.members:
        if member.role == "follower":
            continue
        at = roots[member.ids]
        groups = group_of[at]
        for group in torch.unique(groups[groups >= 0]).tolist():
            positions = torch.nonzero(groups == group).flatten()
            piece = Piece(_owner(member.name), member.dim, positions, unit_of[at[positions]])
            pieces[group].append(piece)
    return {
        _name(key): VirtualOp(counts[group], tuple(pieces[group]))
        for key, group in numbered.items()
    }


def _name(key: tuple[str, ...]) -> str:
    shown = ", ".join(key[:3]) + (f" and {len(key) - 3} more" if len(key) > 3 else "")
    return f"channels made by {shown}"
