"""``Pattern``: the base class of every pattern. A pattern describes geometry; the engine
chooses.

A pattern turns scores into masks and nothing else: it never reads gradients, never touches
a module's parameters and never knows the schedule. ``get_pattern`` builds
``Cls(config, modules)``; then ``get_masks(scores, target_sparsity, pre_masks)`` returns one
bool mask per op, shaped like its weight (True = keep).

Two ways to write a pattern:

* give it ``Options`` and override :meth:`Pattern.layout` to say how each op's weight
  splits into blocks (a :class:`~prunekit.masks.geometry.BlockLayout`). The engine then does
  the rest exactly: counts, ties by index, caps, local and global scope, pre-masks,
  streaming (:meth:`iter_masks`) and torch.distributed (:mod:`prunekit.distributed`); the
  ``indivisible`` option (partial edge blocks, skip, raise) is applied here, once;
* or override :meth:`Pattern.get_masks` alone, calling :meth:`check_target` and
  :meth:`check_inputs` first, for a pattern that is not "remove the lowest blocks".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from prunekit.errors import (
    ImpossibleTargetError,
    IndivisibleShapeError,
    PruningWarning,
    UnsupportedModuleError,
)
from prunekit.masks.checks import check_inputs
from prunekit.masks.engine import decide, masks
from prunekit.masks.geometry import (
    BlockLayout,
    Reduce,
    blocks_at,
    hardware_valid,
    indivisible_reason,
    partial_edges,
)
from prunekit.masks.limits import OpLimit, op_limit, unreachable
from prunekit.masks.limits import check_target as checked_target
from prunekit.masks.problem import Part, Problem, Settings, build
from prunekit.masks.problem import Scope as EngineScope
from prunekit.masks.views import Transposed, is_transposed_linear

Masks = dict[str, Tensor]
_Options = TypeVar("_Options", bound=BaseModel)


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


class PatternConfig(Protocol):
    """What a pattern reads of its config (a validated :class:`prunekit.PruningConfig`)."""

    @property
    def pattern(self) -> str: ...
    @property
    def target_sparsity(self) -> float: ...
    @property
    def pruning_scope(self) -> str: ...
    @property
    def min_sparsity_ratio_per_op(self) -> float: ...
    @property
    def max_sparsity_ratio_per_op(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def pattern_options(self) -> dict[str, Any]: ...

    def options_for(self, model: type[_Options]) -> _Options:
        """The pattern options validated by ``model`` (validated once per config)."""
        ...


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
    # Whether the masks depend on the scores (N2D2's random filler's do not).
    uses_scores: ClassVar[bool] = True
    # Whether the pattern removes whole units across ops itself (attention heads): a
    # coupled config then uses it as it is.
    couples_itself: ClassVar[bool] = False
    module_types: ClassVar[tuple[type[nn.Module], ...]] = (
        nn.Linear,
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
    )

    def __init__(self, config: PatternConfig, modules: Mapping[str, nn.Module]) -> None:
        if isinstance(config, Mapping):
            raise TypeError(
                f"{type(self).__name__} needs a validated config, got a "
                f"{type(config).__name__}: build patterns with prunekit.get_pattern(config, "
                "modules), which validates a dict first"
            )
        self.config = config
        self.options: Any = config.options_for(self.Options)
        self.params: dict[str, Any] = dict(self.parse_spec(config.pattern))
        if not isinstance(modules, Mapping) or not modules:
            raise UnsupportedModuleError(
                f"pattern {config.pattern!r} needs a non-empty mapping of op name -> "
                f"module, got {modules!r}"
            )
        # Each op's weight seen (out, in, ...), as its blocks are laid out, and as stored (a
        # transposed Linear, GPT-2's Conv1D, is stored (in, out)).
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.weight_shapes: dict[str, tuple[int, ...]] = {}
        self.transposed: set[str] = set()
        self.module_kinds: dict[str, str] = {}
        for name, module in modules.items():
            self._check_module(name, module)
            self.weight_shapes[name] = tuple(_weight(module).shape)
            self.shapes[name] = self.weight_shapes[name]
            if is_transposed_linear(module):
                self.transposed.add(name)
                self.shapes[name] = self.weight_shapes[name][::-1]
            self.module_kinds[name] = type(module).__name__
        # Ops left out on purpose (no whole block, indivisible="skip"), with the reason.
        self.skipped: dict[str, str] = {}
        self.layouts: dict[str, BlockLayout] = {}
        if type(self).layout is not Pattern.layout:
            for name, module in modules.items():
                layout = self._usable_layout(name, self.layout(name, module))
                if layout is not None:
                    self.layouts[name] = layout
            if self.skipped:
                self._warn_skipped()

    # -- what a subclass says -----------------------------------------------------------------
    @classmethod
    def default_target(cls, spec: str) -> float | None:
        """The target sparsity a config of this pattern gets when it names none (None: the
        config's own default)."""
        return None

    @classmethod
    def check_config(cls, config: PatternConfig) -> dict[str, str]:
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

    def local_block_count(self, name: str, target: float) -> int:
        """Blocks op ``name`` removes under local scope before its caps are applied:
        ``round(target * blocks)`` (Python's round, as torch.nn.utils.prune)."""
        return round(blocks_at(self.layouts[name], target))

    def block_elements(self, name: str) -> int:
        """How many elements op ``name`` loses together: a block's (for a layout-based
        pattern), else 1. A pattern that overrides ``get_masks`` alone and removes larger
        units says so here; prunekit.testing's contract checks allow that much."""
        layout = self.layouts.get(name)
        return 1 if layout is None else max(layout.block_size, 1)

    def channel_side(self, name: str) -> Literal["out", "in"] | None:
        """Whether this pattern removes whole output channels of op ``name`` (filters,
        output neurons: ``"out"``), whole input channels (``"in"``), or neither (None).
        Coupled pruning (``coupled: true``) needs one of the two: it then removes a whole
        class of tied channels, in every op that makes or reads it."""
        return None

    def independent_column_width(self, name: str, target: float) -> int | None:
        """The width of the column groups of op ``name`` whose masks this pattern chooses
        each by itself at ``target`` (each group's mask depends on its own scores alone), or
        None when blocks across wider spans compete. A criterion that reconstructs
        (sparsegpt) then chooses each group's mask only when its column sweep reaches the
        group, from scores that include the updates of the columns before it, as SparseGPT's
        reference does for N:M. Default None: the mask of a whole column block is chosen at
        its start."""
        return None

    def check_target(self, target_sparsity: float) -> float:
        """The target as a float, or an error naming it and the valid range."""
        return checked_target(target_sparsity, self.config.max_sparsity_ratio_per_op)

    def is_hardware_valid(self, name: str, mask: Tensor) -> bool | None:
        """Whether op ``name``'s mask has the layout sparse hardware needs (N:M patterns);
        None where the notion does not apply."""
        layout = self.layouts.get(name)
        if layout is None:
            return None
        return hardware_valid(layout, mask.t() if name in self.transposed else mask)

    def skip(self, name: str, reason: str) -> None:
        """Leave op ``name`` unpruned, with the reason kept for reports."""
        self.skipped[name] = reason

    def check_inputs(
        self, scores: Mapping[str, Tensor], pre_masks: Mapping[str, Tensor] | None = None
    ) -> None:
        """Raise :class:`~prunekit.errors.ScoreError` unless ``scores`` has exactly this
        pattern's ops, each a float tensor shaped like its weight without NaN, and
        ``pre_masks`` (if any) has bool masks of the same shapes for some of them."""
        check_inputs(self.weight_shapes, scores, pre_masks)

    # -- masks ----------------------------------------------------------------------------------
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
        problem = self.problem(scores, target_sparsity, pre_masks)
        return dict(self._stored(masks(problem, decide(problem))))

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
        LLM) is pruned op by op, each mask applied and dropped before the next. Every
        decision is taken before the first mask is yielded.
        """
        problem = self.problem(scores, target_sparsity, pre_masks, streaming=True)
        return self._stored(masks(problem, decide(problem)))

    def problem(
        self,
        scores: Mapping[str, Tensor],
        target_sparsity: float,
        pre_masks: Mapping[str, Tensor] | None = None,
        *,
        streaming: bool = False,
        parts: Mapping[str, Part] | None = None,
    ) -> Problem:
        """The selection problem for these inputs, checked (the engine's one way in)."""
        target = self.check_target(target_sparsity)
        self.check_inputs(scores, pre_masks)
        scope = self.config.pruning_scope
        if scope not in ("local", "per_output") or not self.layouts:
            problem = self.unreachable(target)
            if problem is not None and (self.layouts or type(self).layout is not Pattern.layout):
                raise problem
        engine_scope: EngineScope = "global"
        if scope == "per_output":
            self._check_rows_are_outputs()
            engine_scope = "per_output"
        elif scope == "local":
            engine_scope = "local"
        settings = Settings(
            scope=engine_scope,
            min_ratio=self.config.min_sparsity_ratio_per_op,
            max_ratio=self.config.max_sparsity_ratio_per_op,
            how=getattr(self.options, "criterion_reduce_type", "mean"),
            wanted=self.local_block_count,
        )
        if self.transposed:  # the (out, in) view of transposed Linears, without a copy
            scores = Transposed(scores, self.transposed)
            pre_masks = Transposed(pre_masks, self.transposed) if pre_masks else pre_masks
        return build(
            self.shapes, self.layouts, settings, scores, target, pre_masks,
            streaming=streaming, parts=parts,
        )  # fmt: skip

    def _stored(self, found: Iterator[tuple[str, Tensor]]) -> Iterator[tuple[str, Tensor]]:
        """Masks shaped like the weights as stored (a transposed Linear's transposed back)."""
        for name, mask in found:
            yield name, mask.t().contiguous() if name in self.transposed else mask

    def limits(self) -> list[OpLimit]:
        """What the caps and each op's blocks let it remove (the ops left unpruned aside)."""
        low, high = self.config.min_sparsity_ratio_per_op, self.config.max_sparsity_ratio_per_op
        return [
            op_limit(name, layout, math.prod(self.shapes[name]), low, high)
            for name, layout in self.layouts.items()
        ]

    def reachable_sparsity(self) -> float:
        """The highest sparsity of the pruned ops' weights the caps and the block layouts
        allow (an upper bound where block sizes differ); ops left unpruned do not count."""
        if not self.layouts:
            return 1.0 if type(self).layout is Pattern.layout else 0.0
        limits = self.limits()
        total = sum(op.elements for op in limits)
        return sum(op.most for op in limits) / total if total else 0.0

    def unreachable(
        self, target: float, what: str = "target_sparsity"
    ) -> ImpossibleTargetError | None:
        """The error for a global ``target`` the caps and layouts cannot reach, naming the
        ops that limit it and the remedy (None: it can be reached)."""
        return unreachable(
            target, self.limits(), self.skipped, self.config.max_sparsity_ratio_per_op, what
        )

    # -- internals ------------------------------------------------------------------------------
    def _check_rows_are_outputs(self) -> None:
        """``per_output`` compares blocks within rows of dim 0, which is the output side of
        every supported weight but a transposed convolution's (stored ``(in, out, ...)``)."""
        for name in self.layouts:
            if self.module_kinds[name].startswith("ConvTranspose"):
                raise UnsupportedModuleError(
                    f"pattern {self.config.pattern!r}: pruning_scope 'per_output' compares "
                    f"weights within output rows, but op {name!r} ({self.module_kinds[name]}) "
                    "stores its input channels along dim 0; use pruning_scope 'local' or "
                    "'global', or leave it out (excluded_op_names)"
                )

    def _check_module(self, name: str, module: nn.Module) -> None:
        """Refuse a module this pattern cannot lay its blocks on, naming what it supports."""
        weight = getattr(module, "weight", None)
        known = isinstance(module, self.module_types) or (
            nn.Linear in self.module_types and is_transposed_linear(module)
        )
        if not known or not isinstance(weight, Tensor):
            supported = ", ".join(t.__name__ for t in self.module_types)
            if nn.Linear in self.module_types:
                supported += " (and transposed Linears: Hugging Face's Conv1D)"
            raise UnsupportedModuleError(
                f"pattern {self.config.pattern!r} cannot prune op {name!r} "
                f"({type(module).__name__}): it supports {supported}"
            )

    def _usable_layout(self, name: str, layout: BlockLayout | None) -> BlockLayout | None:
        """``layout`` after the one ``indivisible`` rule: a weight that does not divide into
        whole blocks gets partial edge blocks, is skipped or raises, as the option says; a
        layout with no block at all is skipped."""
        if layout is None:
            return None
        reason = indivisible_reason(layout)
        if reason is not None:
            policy = getattr(self.options, "indivisible", "partial")
            if policy == "raise":
                raise IndivisibleShapeError(
                    f"op {name!r}: {reason}; use indivisible='partial' "
                    f"({partial_edges(layout)}) or 'skip'"
                )
            if policy == "skip":
                self.skip(name, reason)
                return None
        if layout.num_blocks == 0:
            self.skip(name, reason or "it has no whole block")
            return None
        return layout

    def _warn_skipped(self) -> None:
        """One warning naming every op this pattern leaves unpruned, and why."""
        listed = "; ".join(f"{name!r}: {why}" for name, why in self.skipped.items())
        warnings.warn(
            f"pattern {self.config.pattern!r} leaves {len(self.skipped)} of "
            f"{len(self.shapes)} ops unpruned ({listed}); the target counts the other ops. "
            "Exclude them (excluded_op_names) to silence this",
            PruningWarning,
            stacklevel=4,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(pattern={self.config.pattern!r}, "
            f"scope={self.config.pruning_scope!r}, ops={list(self.shapes)})"
        )


def _weight(module: nn.Module) -> Tensor:
    weight = getattr(module, "weight", None)
    assert isinstance(weight, Tensor)  # _check_module made sure
    return weight
