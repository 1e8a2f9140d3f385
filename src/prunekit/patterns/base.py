"""``Pattern``: the base class of every pattern, and the block machinery most share.

A pattern turns scores into masks and nothing else: it never reads gradients, never touches
a module's parameters and never knows the schedule. ``get_pattern`` builds
``Cls(config, modules)``; then ``get_masks(scores, target_sparsity, pre_masks)`` returns one
bool mask per op, shaped like its weight (True = keep).

Two ways to write a pattern:

* override :meth:`Pattern.layout` to say how each op's weight splits into blocks (return a
  :class:`~prunekit.patterns.layout.BlockLayout`); the base class then does the rest, exactly
  as ``SEMANTICS.md`` says (exact counts, ties by index, caps, global scope, pre-masks);
* or override :meth:`Pattern.get_masks` alone, calling :meth:`Pattern.check_inputs` first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from prunekit._memory import release_freed_memory
from prunekit.errors import ImpossibleTargetError, ScoreError, UnsupportedModuleError
from prunekit.patterns.fastselect import (
    FastOp,
    global_plan,
    keep_all_but_lowest,
    worth_spreading,
)
from prunekit.patterns.hostops import map_ops
from prunekit.patterns.layout import BlockLayout, Reduce
from prunekit.patterns.selection import (
    OpBlocks,
    cap_counts,
    global_counts,
    key_dtype_for,
    local_count,
    lowest_k,
    removed_sentinel,
    sortable_keys,
)

if TYPE_CHECKING:
    from prunekit.config import PruningConfig

Masks = dict[str, Tensor]


class PatternOptions(BaseModel):
    """A pattern's own config fields. Subclass it, add fields with bounds and descriptions,
    and set it as the pattern's ``Options``; it is closed (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ReduceOptions(PatternOptions):
    """Options of patterns whose blocks hold several elements."""

    criterion_reduce_type: Reduce = Field(
        "mean",
        description="How a block's score reduces its elements' scores: 'mean' (blocks "
        "of different sizes compare fairly), 'sum' or 'max'. INC's field name.",
    )


class BlockOptions(ReduceOptions):
    """Options of tiling patterns, whose tiles may not divide a weight's shape."""

    indivisible: Literal["partial", "skip", "raise"] = Field(
        "partial",
        description="A weight whose shape does not divide the block: 'partial' "
        "edge blocks (scored by their mean), 'skip' the op (named in the report), or 'raise'.",
    )


# Every module whose weight prunekit knows the layout of (patterns narrow this down).
WEIGHT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


class Pattern:
    """Base class of every pattern: turns scores into bool masks (True = keep).

    Class attributes a subclass may set: ``description`` (one line, for ``prunekit
    patterns``), ``family`` (the kind of pattern, for listings), ``spec`` and
    ``spec_examples`` (a family grammar, a regular expression that must match a whole spec,
    with examples), ``Options`` (its config fields) and ``module_types`` (the modules it
    can prune).
    """

    description: ClassVar[str] = ""
    family: ClassVar[str] = ""  # the kind of pattern, for listings ("granularity", ...)
    spec: ClassVar[str | None] = None
    spec_examples: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type[PatternOptions]] = BlockOptions
    module_types: ClassVar[tuple[type[nn.Module], ...]] = (
        nn.Linear,
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
    )

    def __init__(
        self, config: PruningConfig | Mapping[str, Any], modules: Mapping[str, nn.Module]
    ) -> None:
        from prunekit.config import load_config

        self.config = load_config(config)
        self.options: Any = self.Options.model_validate(self.config.pattern_options)
        self.params: dict[str, Any] = dict(self.parse_spec(self.config.pattern))
        if not isinstance(modules, Mapping) or not modules:
            raise UnsupportedModuleError(
                f"pattern {self.config.pattern!r} needs a non-empty mapping of op name -> "
                f"module, got {modules!r}"
            )
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.module_kinds: dict[str, str] = {}
        for name, module in modules.items():
            self._check_module(name, module)
            self.shapes[name] = tuple(_weight(module).shape)
            self.module_kinds[name] = type(module).__name__
        # Ops left out on purpose (indivisible="skip"), with the reason, for reports.
        self.skipped: dict[str, str] = {}
        self.layouts: dict[str, BlockLayout] = {}
        if type(self).layout is not Pattern.layout:
            for name, module in modules.items():
                layout = self.layout(name, module)
                if layout is not None:
                    self.layouts[name] = layout

    # -- hooks for subclasses -----------------------------------------------------------------
    @classmethod
    def default_target(cls, spec: str) -> float | None:
        """The target sparsity a config of this pattern gets when it names none (None: the
        config's own default)."""
        return None

    @classmethod
    def check_config(cls, config: PruningConfig) -> dict[str, str]:
        """Problems with ``config`` that only this pattern knows (field -> message), checked
        when the config is validated. Default: none."""
        return {}

    @classmethod
    def parse_spec(cls, spec: str) -> Mapping[str, Any]:
        """Parameters a family reads from its spec (``"4x1"`` -> ``{"n": 4, "m": 1}``).
        Raise :class:`~prunekit.errors.InvalidSpecError` for a spec the grammar matches but
        whose values are invalid."""
        return {}

    def layout(self, name: str, module: nn.Module) -> BlockLayout | None:
        """The block layout of op ``name``, or None to skip it (call :meth:`skip` first)."""
        raise NotImplementedError(f"{type(self).__name__} must override layout() or get_masks()")

    def is_hardware_valid(self, name: str, mask: Tensor) -> bool | None:
        """Whether op ``name``'s mask has the layout sparse hardware needs (N:M patterns);
        None where the notion does not apply."""
        return None

    def skip(self, name: str, reason: str) -> None:
        """Leave op ``name`` unpruned, with the reason kept for reports."""
        self.skipped[name] = reason

    # -- validation -------------------------------------------------------------------------
    def _check_module(self, name: str, module: nn.Module) -> None:
        weight = getattr(module, "weight", None)
        if not isinstance(module, self.module_types) or not isinstance(weight, Tensor):
            supported = ", ".join(t.__name__ for t in self.module_types)
            raise UnsupportedModuleError(
                f"pattern {self.config.pattern!r} cannot prune op {name!r} "
                f"({type(module).__name__}): it supports {supported}"
            )

    def check_target(self, target_sparsity: float) -> float:
        """The target as a float, or an error naming it and the valid range."""
        if isinstance(target_sparsity, bool) or not isinstance(target_sparsity, (int, float)):
            raise ValueError(
                f"target_sparsity: expected a number in [0, 1), got {target_sparsity!r}"
            )
        target = float(target_sparsity)
        if not (0.0 <= target < 1.0) or math.isnan(target):
            raise ValueError(f"target_sparsity: {target_sparsity!r} is not in [0, 1)")
        cap = self.config.max_sparsity_ratio_per_op
        if target > cap:
            raise ImpossibleTargetError(
                f"target_sparsity {target} is above max_sparsity_ratio_per_op {cap}: no op may "
                f"remove more than {cap:.2%}, so the target is short by {target - cap:.2%}"
            )
        return target

    def check_inputs(
        self, scores: Mapping[str, Tensor], pre_masks: Mapping[str, Tensor] | None = None
    ) -> None:
        """Raise :class:`~prunekit.errors.ScoreError` unless ``scores`` has exactly this
        pattern's ops, each a float tensor shaped like its weight without NaN, and
        ``pre_masks`` (if any) has bool masks of the same shapes for some of them."""
        if not isinstance(scores, Mapping):
            raise ScoreError(
                f"scores: expected a mapping of op name -> tensor, got {type(scores).__name__}"
            )
        _check_names("scores", scores, self.shapes, require_all=True)
        for name, shape in self.shapes.items():
            value = scores[name]
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise ScoreError(
                    f"scores[{name!r}]: expected a float tensor, got "
                    f"{getattr(value, 'dtype', type(value).__name__)}"
                )
            if tuple(value.shape) != shape:
                raise ScoreError(
                    f"scores[{name!r}]: shape {tuple(value.shape)} does not match "
                    f"the weight's shape {shape}"
                )
            # A sum is NaN if any element is (and when +inf meets -inf): cheap first test.
            if torch.isnan(value.sum()) and bool(torch.isnan(value).any()):
                count = int(torch.isnan(value).sum())
                raise ScoreError(
                    f"scores[{name!r}]: {count} NaN value(s); scores must be numbers "
                    "(inf is allowed)"
                )
        if pre_masks is None:
            return
        if not isinstance(pre_masks, Mapping):
            raise ScoreError(
                f"pre_masks: expected a mapping of op name -> bool tensor, got "
                f"{type(pre_masks).__name__}"
            )
        _check_names("pre_masks", pre_masks, self.shapes, require_all=False)
        for name, mask in pre_masks.items():
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise ScoreError(
                    f"pre_masks[{name!r}]: expected a bool tensor, got "
                    f"{getattr(mask, 'dtype', type(mask).__name__)}"
                )
            if tuple(mask.shape) != self.shapes[name]:
                raise ScoreError(
                    f"pre_masks[{name!r}]: shape {tuple(mask.shape)} does not match "
                    f"the weight's shape {self.shapes[name]}"
                )

    # -- masks --------------------------------------------------------------------------------
    def get_masks(
        self,
        scores: Mapping[str, Tensor],
        target_sparsity: float,
        pre_masks: Mapping[str, Tensor] | None = None,
    ) -> Masks:
        """One bool mask per op (True = keep), shaped like its weight.

        ``scores``: op name -> tensor shaped like the weight, higher = more important.
        ``target_sparsity``: the fraction of elements to remove, locally per op or globally
        over all ops (``config.pruning_scope``), within the per-op caps. ``pre_masks``:
        masks from an earlier step; what they removed stays removed and counts.
        """
        return dict(self._masks(scores, target_sparsity, pre_masks, streaming=False))

    def iter_masks(
        self,
        scores: Mapping[str, Tensor],
        target_sparsity: float,
        pre_masks: Mapping[str, Tensor] | None = None,
    ) -> Iterator[tuple[str, Tensor]]:
        """The masks of :meth:`get_masks`, one op at a time, in op order.

        Holds no mask beyond the one it yields and reads ``scores[name]`` again whenever it
        needs an op's scores, so ``scores`` may be a mapping that computes them on demand:
        with it, a model whose scores and masks do not fit in memory beside its weights (an
        LLM) is pruned op by op, each mask applied and dropped before the next.
        """
        return self._masks(scores, target_sparsity, pre_masks, streaming=True)

    def _masks(
        self,
        scores: Mapping[str, Tensor],
        target_sparsity: float,
        pre_masks: Mapping[str, Tensor] | None,
        *,
        streaming: bool,
    ) -> Iterator[tuple[str, Tensor]]:
        target = self.check_target(target_sparsity)
        self.check_inputs(scores, pre_masks)
        if streaming:
            scores = _LatestScores(scores)
        pre = dict(pre_masks or {})
        how: Reduce = getattr(self.options, "criterion_reduce_type", "mean")
        names = list(self.layouts)
        keeps = self._fast_keeps(names, scores, pre, how, target, streaming=streaming)
        if keeps is None:
            kept = self._exact_keep(names, scores, pre, how, target)
            keeps = {n: partial(_identity, kept[n]) for n in names}
        return self._expanded(scores, pre, keeps, streaming=streaming)

    def _expanded(
        self,
        scores: Mapping[str, Tensor],
        pre: Mapping[str, Tensor],
        keeps: Mapping[str, Callable[[], Tensor]],
        *,
        streaming: bool = False,
    ) -> Iterator[tuple[str, Tensor]]:
        for name in self.shapes:
            if streaming:
                release_freed_memory()  # the previous op's buffers, before the next op's
            if name in self.layouts:
                mask = self.expand_blocks(name, keeps[name](), scores[name], pre.get(name))
            else:
                mask = torch.ones(self.shapes[name], dtype=torch.bool, device=scores[name].device)
            if name in pre:
                mask = mask & pre[name].to(mask.device)
            yield name, mask

    def _fast_keeps(
        self,
        names: list[str],
        scores: Mapping[str, Tensor],
        pre: Mapping[str, Tensor],
        how: Reduce,
        target: float,
        *,
        streaming: bool,
    ) -> dict[str, Callable[[], Tensor]] | None:
        """Per op, a function giving its kept blocks, decided by counting
        (:mod:`~prunekit.patterns.fastselect`); or None when a layout has blocks of different
        sizes (partial edges) or a pre-removed block would tie with a ``-inf`` score: the
        exact radix path handles those. All counting happens here, before any mask is made."""
        if any(self.layouts[n].sizes is not None for n in names):
            return None
        ops: list[FastOp] = []
        for name in names:
            # Block scores are computed when first needed: an op that removes all or none of
            # its blocks (N:M at N/M) never needs them.
            values = self._block_values(name, scores[name], how) if name in pre else None
            removed_before = 0
            if name in pre:
                assert values is not None
                fully = self.removed_blocks(name, pre[name].to(values.device))
                removed_before = int(fully.sum())
                if removed_before and bool(torch.isneginf(values).any()):
                    return None
            lo, hi = self.block_caps(name, removed_before)
            if streaming:  # computed again when needed: no op's scores are kept
                source: Tensor | Callable[[], Tensor] = partial(
                    self._fast_values, name, scores, pre, how
                )
                del values
            else:
                source = _Once(partial(self._fast_values, name, scores, pre, how, values))
            layout = self.layouts[name]
            device = None if streaming else scores[name].device  # streaming: read when needed
            ops.append(FastOp(source, layout.block_size, lo, hi, layout.num_blocks, device=device))
        if self.config.pruning_scope == "local":
            counts = [
                self.local_block_count(n, _as_op_blocks(op), target)
                for n, op in zip(names, ops, strict=True)
            ]
            if streaming:  # one op at a time, when its mask is wanted
                return {
                    n: partial(_keep_all_but_lowest, op, k)
                    for n, op, k in zip(names, ops, counts, strict=True)
                }
            for op, k in zip(ops, counts, strict=True):
                if 0 < k < op.count:
                    op.get()  # block scores through this pattern's hooks, one op at a time
            # The selections (prunekit's own code only) run on all cores at once.
            jobs = list(zip(ops, counts, strict=True))
            kept = map_ops(_keep_job, jobs, parallel=worth_spreading(ops))
            return {n: partial(_identity, k) for n, k in zip(names, kept, strict=True)}
        total = sum(self.layout_elements(n) for n in names)
        plans = global_plan(ops, round(target * total), total, retain=not streaming)
        return {
            n: partial(plan.materialize, op) for n, op, plan in zip(names, ops, plans, strict=True)
        }

    def _fast_values(
        self,
        name: str,
        scores: Mapping[str, Tensor],
        pre: Mapping[str, Tensor],
        how: Reduce,
        values: Tensor | None = None,
    ) -> Tensor:
        """Op ``name``'s block scores, with blocks a pre-mask removed set to ``-inf`` (they
        go first and count)."""
        if values is None:
            values = self._block_values(name, scores[name], how)
        if name in pre:
            fully = self.removed_blocks(name, pre[name].to(values.device))
            if bool(fully.any()):
                values = values.clone()
                values[fully] = float("-inf")
        return values

    def _block_values(self, name: str, scores: Tensor, how: Reduce) -> Tensor:
        """1-D block scores, checked for the NaN a block mixing +inf and -inf makes."""
        values = self.block_scores(name, scores, how).reshape(-1)
        reduced = values.data_ptr() != scores.data_ptr()
        if reduced and torch.isnan(values.sum()) and bool(torch.isnan(values).any()):
            raise ScoreError(
                f"scores[{name!r}]: a block mixes +inf and -inf, so its {how} is "
                "undefined; use criterion_reduce_type='max' or finite scores"
            )
        return values

    def _exact_keep(
        self,
        names: list[str],
        scores: Mapping[str, Tensor],
        pre: Mapping[str, Tensor],
        how: Reduce,
        target: float,
    ) -> dict[str, Tensor]:
        """Kept blocks per op by the radix search on sortable keys (any block sizes)."""
        dtype = key_dtype_for(
            torch.float64 if any(scores[n].dtype == torch.float64 for n in names) else torch.float32
        )
        ops = [self._op_blocks(n, scores[n].to(dtype), pre.get(n), how) for n in names]
        if self.config.pruning_scope == "local":
            counts = [
                self.local_block_count(n, op, target) for n, op in zip(names, ops, strict=True)
            ]
        else:
            total = sum(self.layout_elements(n) for n in names)
            counts = global_counts(ops, round(target * total), total)
        return {n: ~lowest_k(op.keys, k) for n, op, k in zip(names, ops, counts, strict=True)}

    def reachable_sparsity(self) -> float:
        """The highest sparsity the caps and the block layout allow over all ops (an upper
        bound where block sizes differ): what a config's target must not exceed."""
        if not self.layouts:
            return 1.0 if type(self).layout is Pattern.layout else 0.0
        total = sum(math.prod(shape) for shape in self.shapes.values())
        removable = 0
        for name, layout in self.layouts.items():
            hi = self.block_caps(name, 0)[1]
            if layout.sizes is None:
                removable += hi * layout.block_size
            else:
                removable += int(torch.sort(layout.sizes, descending=True).values[:hi].sum())
        return removable / total if total else 0.0

    # -- finer hooks of the block machinery (override to change one step) -------------------
    def block_scores(self, name: str, scores: Tensor, how: Reduce) -> Tensor:
        """1-D score per block of op ``name`` (default: the layout's reduction)."""
        return self.layouts[name].reduce(scores, how)

    def removed_blocks(self, name: str, pre_mask: Tensor) -> Tensor:
        """1-D bool per block: blocks a pre-mask already removed (default: every element)."""
        return self.layouts[name].reduce(pre_mask.to(torch.float32), "max") <= 0

    def block_caps(self, name: str, pre_removed: int) -> tuple[int, int]:
        """(lo, hi): how many blocks op ``name`` must / may remove under the ratio caps."""
        return cap_counts(
            self.layouts[name].num_blocks,
            self.config.min_sparsity_ratio_per_op,
            self.config.max_sparsity_ratio_per_op,
            pre_removed,
        )

    def layout_elements(self, name: str) -> int:
        """Elements of op ``name`` that the global target counts (default: the weight's)."""
        return math.prod(self.shapes[name])

    def local_block_count(self, name: str, op: OpBlocks, target: float) -> int:
        """Blocks op ``name`` removes under local scope: ``round(target * blocks)`` in caps."""
        return local_count(op.num_blocks, target, op.lo, op.hi)

    def expand_blocks(
        self, name: str, keep_blocks: Tensor, scores: Tensor, pre_mask: Tensor | None
    ) -> Tensor:
        """Weight-shaped bool mask from the 1-D keep decision per block (default: every
        element of a block follows it)."""
        return self.layouts[name].expand(keep_blocks)

    def _op_blocks(
        self, name: str, scores: Tensor, pre_mask: Tensor | None, how: Reduce
    ) -> OpBlocks:
        layout = self.layouts[name]
        block_scores = self.block_scores(name, scores, how)
        if torch.isnan(block_scores).any():
            raise ScoreError(
                f"scores[{name!r}]: a block mixes +inf and -inf, so its {how} is "
                "undefined; use criterion_reduce_type='max' or finite scores"
            )
        keys = sortable_keys(block_scores)
        removed = 0
        if pre_mask is not None:
            fully_removed = self.removed_blocks(name, pre_mask.to(scores.device))
            keys[fully_removed] = removed_sentinel(keys)
            removed = int(fully_removed.sum())
        lo, hi = self.block_caps(name, removed)
        sizes = None if layout.sizes is None else layout.sizes.to(keys.device)
        return OpBlocks(keys, sizes, layout.block_size, lo, hi)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(pattern={self.config.pattern!r}, "
            f"scope={self.config.pruning_scope!r}, ops={list(self.shapes)})"
        )


def _identity(value: Tensor) -> Tensor:
    return value


class _LatestScores(Mapping[str, Tensor]):
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

    def __iter__(self) -> Iterator[str]:
        return iter(self.scores)

    def __len__(self) -> int:
        return len(self.scores)


class _Once:
    """A computation run on the first call and remembered for the next ones."""

    def __init__(self, compute: Callable[[], Tensor]) -> None:
        self.compute = compute
        self.value: Tensor | None = None

    def __call__(self) -> Tensor:
        if self.value is None:
            self.value = self.compute()
        return self.value


def _keep_job(job: tuple[FastOp, int]) -> Tensor:
    return _keep_all_but_lowest(*job)


def _keep_all_but_lowest(op: FastOp, k: int) -> Tensor:
    """The op's kept blocks when it removes its ``k`` lowest; its scores are not computed
    when it removes none or all."""
    if k <= 0 or k >= op.count:
        return torch.full((op.count,), k <= 0, dtype=torch.bool, device=op.where())
    return keep_all_but_lowest(op.get(), k)


def _as_op_blocks(op: FastOp) -> OpBlocks:
    """The view of a counting op that the ``local_block_count`` hook takes (its keys are a
    placeholder with no storage: the hook reads counts and caps only)."""
    return OpBlocks(torch.empty(op.count, device="meta"), None, op.size, op.lo, op.hi)


def _weight(module: nn.Module) -> Tensor:
    weight = getattr(module, "weight", None)
    assert isinstance(weight, Tensor)  # _check_module made sure
    return weight


def _check_names(
    what: str, given: Mapping[str, Any], expected: Mapping[str, Any], *, require_all: bool
) -> None:
    names = set(given)  # iterated, never looked up: a mapping may compute its values
    missing = [n for n in expected if n not in names] if require_all else []
    extra = [n for n in given if n not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(map(repr, missing))}")
        if extra:
            parts.append(f"unexpected {', '.join(map(repr, extra))}")
        raise ScoreError(
            f"{what}: names do not match the pattern's ops ({'; '.join(parts)}); "
            f"expected {', '.join(map(repr, expected))}"
        )
