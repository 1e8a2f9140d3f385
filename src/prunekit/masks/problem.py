"""The one problem builder: from a pattern's geometry, scores and pre-masks to what the
selection engine solves.

``get_masks``, ``iter_masks`` and :func:`prunekit.distributed.global_masks` all build their
problem here, so a pattern's layouts, caps and counting rules are applied the same way in
all three. The builder decides which engine solves it: the counting engine
(:mod:`~prunekit.masks.select.counting`) when every op's blocks have one size, else the
reference (:mod:`~prunekit.masks.select.reference`), which also settles the rare case of a
block a pre-mask removed tying with a ``-inf`` score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from prunekit.errors import ScoreError
from prunekit.masks.geometry import BlockLayout, Reduce, removed_blocks
from prunekit.masks.limits import caps_of, local_count
from prunekit.masks.select.scored import ScoredOp

Scope = Literal["global", "local", "per_output"]
Engine = Literal["counting", "reference"]


@dataclass(frozen=True)
class Settings:
    """What a selection reads of a pattern's config: the scope, the per-op ratio caps, how
    a block's score reduces its elements', and how many blocks an op removes alone."""

    scope: Scope
    min_ratio: float
    max_ratio: float
    how: Reduce
    wanted: Callable[[str, float], int]  # (op, target) -> blocks it removes under local scope


@dataclass(frozen=True)
class Part:
    """A rank's share of an op in a multi-rank selection: its id in the whole model's op
    order and, for a row shard, its first block in the whole op and the whole op's layout
    (its caps are the whole op's)."""

    op: int
    first_block: int = 0
    whole: BlockLayout | None = None


@dataclass
class Op:
    """One op of the problem: its layout, caps and block scores (computed on demand)."""

    name: str
    layout: BlockLayout
    elements: int  # of the weight (part): what a global target counts
    lo: int
    hi: int
    pre_removed: int
    scored: ScoredOp  # what the counting engine reads
    local: int = 0  # blocks it removes under local scope


@dataclass
class Problem:
    """Which blocks to remove from which ops: everything an engine needs, nothing more."""

    shapes: Mapping[str, tuple[int, ...]]  # every op, in op order (skipped ones too)
    ops: list[Op]  # the ops with blocks, in op order
    settings: Settings
    target: float
    scores: Mapping[str, Tensor]
    pre: Mapping[str, Tensor]
    streaming: bool
    engine: Engine = "counting"
    elements: int = 0  # every op's elements (this rank's, in a multi-rank selection)
    by_name: dict[str, Op] = field(default_factory=dict)

    @property
    def target_elements(self) -> int:
        """A global target in elements: ``round(target * elements)``."""
        return round(self.target * self.elements)

    def forget_block_scores(self, ops: list[Op]) -> None:
        """Drop the block scores kept for ``ops`` (decided ops whose masks no longer need
        them), so that their memory serves the masks being made."""
        for op in ops:
            source = op.scored.values
            if isinstance(source, _Once):
                source.value = None


def build(
    shapes: Mapping[str, tuple[int, ...]],
    layouts: Mapping[str, BlockLayout],
    settings: Settings,
    scores: Mapping[str, Tensor],
    target: float,
    pre_masks: Mapping[str, Tensor] | None = None,
    *,
    streaming: bool = False,
    parts: Mapping[str, Part] | None = None,
) -> Problem:
    """The problem for checked ``scores`` (and ``pre_masks``) at a checked ``target``.

    ``streaming``: ``scores`` may compute each op's scores on demand; no op's block scores
    are kept, they are computed again when needed. ``parts``: ids and shards of this rank's
    ops in a multi-rank selection."""
    if streaming:
        scores = LatestScores(scores)
    pre = dict(pre_masks or {})
    problem = Problem(shapes, [], settings, target, scores, pre, streaming)
    for name, layout in layouts.items():
        part = (parts or {}).get(name, Part(len(problem.ops)))
        op, clash = _op(problem, name, layout, part)
        problem.ops.append(op)
        problem.by_name[name] = op
        if clash or layout.sizes is not None:
            problem.engine = "reference"
    problem.elements = sum(op.elements for op in problem.ops)
    return problem


def _op(problem: Problem, name: str, layout: BlockLayout, part: Part) -> tuple[Op, bool]:
    """Op ``name`` of ``problem``, and whether a block a pre-mask removed ties with a
    ``-inf`` score (the counting engine marks removed blocks with ``-inf``)."""
    settings, scores, pre = problem.settings, problem.scores, problem.pre
    values = block_values(name, layout, scores[name], settings.how) if name in pre else None
    removed = 0
    clash = False
    if values is not None:
        removed = int(removed_blocks(layout, pre[name].to(values.device)).sum())
        clash = removed > 0 and bool(torch.isneginf(values).any())
    whole = part.whole if part.whole is not None else layout  # a shard's caps: the op's
    lo, hi = caps_of(whole, settings.min_ratio, settings.max_ratio, removed)
    source: Callable[[], Tensor]
    if problem.streaming:  # computed again when needed: no op's scores are kept
        del values
        source = _Marked(name, layout, problem, None)
        device = None
    else:
        source = _Once(_Marked(name, layout, problem, values))
        device = scores[name].device
    scored = ScoredOp(
        source,
        layout.block_size,
        lo,
        hi,
        layout.num_blocks,
        op=part.op,
        offset=part.first_block,
        whole=part.whole.num_blocks if part.whole is not None else -1,
        device=device,
    )
    wanted = settings.wanted(name, problem.target) if settings.scope == "local" else 0
    op = Op(name, layout, math.prod(problem.shapes[name]), lo, hi, removed, scored)
    op.local = local_count(wanted, lo, hi)
    return op, clash


def block_values(name: str, layout: BlockLayout, scores: Tensor, how: Reduce) -> Tensor:
    """1-D block scores of op ``name``, checked for the NaN a block mixing +inf and -inf
    makes."""
    values = layout.reduce(scores, how).reshape(-1)
    reduced = values.data_ptr() != scores.data_ptr()
    if reduced and torch.isnan(values.sum()) and bool(torch.isnan(values).any()):
        raise mixed_infinities(name, how)
    return values


def mixed_infinities(name: str, how: Reduce) -> ScoreError:
    """The error for a block whose scores mix +inf and -inf."""
    return ScoreError(
        f"scores[{name!r}]: a block mixes +inf and -inf, so its {how} is "
        "undefined; use criterion_reduce_type='max' or finite scores"
    )


class _Marked:
    """Op ``name``'s block scores with the blocks a pre-mask removed set to ``-inf`` (they
    go first and count); ``values``: the block scores when already computed."""

    def __init__(
        self, name: str, layout: BlockLayout, problem: Problem, values: Tensor | None
    ) -> None:
        self.name, self.layout, self.problem, self.values = name, layout, problem, values

    def __call__(self) -> Tensor:
        problem, values = self.problem, self.values
        self.values = None  # a streaming source computes them anew every time
        if values is None:
            values = block_values(
                self.name, self.layout, problem.scores[self.name], problem.settings.how
            )
        if self.name in problem.pre:
            fully = removed_blocks(self.layout, problem.pre[self.name].to(values.device))
            if bool(fully.any()):
                values = values.clone()
                values[fully] = float("-inf")
        return values


class _Once:
    """A computation run on the first call and remembered for the next ones."""

    def __init__(self, compute: Callable[[], Tensor]) -> None:
        self.compute = compute
        self.value: Tensor | None = None

    def __call__(self) -> Tensor:
        if self.value is None:
            self.value = self.compute()
        return self.value


class LatestScores(Mapping[str, Tensor]):
    """A view of scores computed on demand that remembers the op read last: a streaming
    pass reads one op's scores a few times in a row (its mask, then its expansion), and a
    mapping such as ``weight.abs()`` would compute them each time. The remembered scores
    are dropped before another op's are computed, so two ops' scores never coexist."""

    def __init__(self, scores: Mapping[str, Tensor]) -> None:
        self.scores = scores
        self.name: str | None = None
        self.value: Tensor | None = None

    def __getitem__(self, name: str) -> Tensor:
        if name != self.name or self.value is None:
            self.name, self.value = None, None
            self.value = self.scores[name]
            self.name = name
        return self.value

    def forget(self) -> None:
        """Drop the remembered scores: the pass is over (the Problem may live on in a
        reference cycle until the garbage collector runs, and an LLM's down_proj scores
        are 0.17 GiB)."""
        self.name, self.value = None, None

    def __iter__(self) -> Iterator[str]:
        return iter(self.scores)

    def __len__(self) -> int:
        return len(self.scores)
