"""``"head"``: whole attention heads, each the rows of q, k and v and the columns of the output.

A head is only removed whole: its query, key and value rows and the output projection's
columns that read it go together, so the masked model computes what a model with fewer
heads computes, and ``pk.slim`` makes it one. With grouped-query attention (fewer key/value
heads than query heads, LLaMA-2-70B, LLaMA-3, Mistral) a key/value head serves a group of
query heads: the unit is then that whole group (its query heads, its key and value head),
so every key/value head keeps the same number of query heads, as the model's forward needs.

Head counts come from the options (``num_heads``, ``num_key_value_heads``), else from the
attention module (its ``head_dim`` or ``attention_head_size``, else its ``num_heads`` or
``num_attention_heads``), else from the model's Hugging Face config; the Pruner hands the
model over (:meth:`HeadPattern.bind_model`). Widths are read from the layers, so a model
slimmed before (fewer heads in some layers) is read right.

Units are selected by the engine (:mod:`prunekit.masks.units`): a unit's score reduces
every weight it touches (``criterion_reduce_type``); local scope removes
``round(target * units)`` of each block's units, global scope compares units across blocks,
counted in the weights they touch; caps apply per block.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from prunekit.errors import IndivisibleShapeError, OpSelectionError, UnsupportedModuleError
from prunekit.masks.checks import check_inputs
from prunekit.masks.limits import check_target
from prunekit.masks.pattern import Masks, Pattern, PatternConfig, ReduceOptions
from prunekit.masks.units import Piece, VirtualOp, unit_masks
from prunekit.masks.views import is_transposed_linear
from prunekit.patterns.attention_blocks import AttentionBlock, attention_blocks
from prunekit.plugins.hookspecs import Register, hookimpl


class HeadOptions(ReduceOptions):
    """The options of ``"head"``."""

    num_heads: int | None = Field(
        None,
        ge=1,
        description="Query heads per attention block; read from the attention module or the "
        "model's config when not given.",
    )
    num_key_value_heads: int | None = Field(
        None,
        ge=1,
        description="Key/value heads per block (grouped-query attention: fewer than "
        "num_heads, each serving num_heads / num_key_value_heads query heads); read from the "
        "layers' widths when not given.",
    )


@dataclass(frozen=True)
class HeadCounts:
    """One block's heads: ``queries`` query heads of ``size`` channels, ``groups`` key/value
    heads (each serving ``queries // groups`` query heads)."""

    queries: int
    groups: int
    size: int


class HeadPattern(Pattern):
    """Whole attention heads (see the module's docstring)."""

    description: ClassVar[str] = (
        "whole attention heads: q, k, v rows and output columns together (key/value groups "
        "under grouped-query attention)"
    )
    family: ClassVar[str] = "attention heads"
    Options = HeadOptions
    module_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear,)
    couples_itself: ClassVar[bool] = True

    def __init__(self, config: PatternConfig, modules: Mapping[str, nn.Module]) -> None:
        super().__init__(config, modules)
        self.modules = dict(modules)
        self.blocks, missing = attention_blocks(modules)
        if missing:
            raise OpSelectionError(_missing_message(missing))
        if not self.blocks:
            raise OpSelectionError(
                f"pattern 'head' found no attention block among the {len(modules)} selected "
                "ops: it needs each block's q, k, v and output projections (q_proj, k_proj, "
                "v_proj, o_proj; self.query, self.key, self.value, output.dense; GPT-2's "
                "c_attn, c_proj; qkv, proj), selected together (op_names)"
            )
        in_blocks = {op for block in self.blocks for op in block.ops}
        for name in sorted(in_blocks):
            super()._check_module(name, modules[name])
        for name in modules:
            if name not in in_blocks:
                self.skip(name, "not a q, k, v or output projection of an attention block")
        self.counts: dict[str, HeadCounts] = {}
        self.units: dict[str, VirtualOp] = {}
        for block in self.blocks:
            self._count(block, None)

    def _check_module(self, name: str, module: nn.Module) -> None:
        """Any op may be selected (a config's default op types take convs too): ops that are
        not an attention block's projections are left alone; those that are must be Linear
        (checked once the blocks are known)."""

    # -- head counts ----------------------------------------------------------------------------
    def bind_model(self, model: nn.Module) -> None:
        """Read head counts the options do not give from the attention modules of ``model``
        (and its Hugging Face config)."""
        found = dict(model.named_modules())
        config = getattr(model, "config", None)
        for block in self.blocks:
            if block.module not in self.counts:
                self._count(block, (found.get(block.module), config))

    def _count(self, block: AttentionBlock, sources: tuple[Any, Any] | None) -> None:
        counts = _head_counts(block, self.modules, self.options, sources)
        if counts is not None:
            self.counts[block.module] = counts
            self.units[block.module] = _units(block, self.modules, counts)

    # -- masks ------------------------------------------------------------------------------------
    def get_masks(
        self,
        scores: Mapping[str, Tensor],
        target_sparsity: float,
        pre_masks: Mapping[str, Tensor] | None = None,
    ) -> Masks:
        """Masks of every op (True = keep): whole heads (or key/value groups) removed."""
        target = check_target(target_sparsity, self.config.max_sparsity_ratio_per_op)
        check_inputs(self.weight_shapes, scores, pre_masks)
        unknown = [block.module for block in self.blocks if block.module not in self.units]
        if unknown:
            raise UnsupportedModuleError(
                f"pattern 'head': the head count of attention block {unknown[0]!r} is not "
                "known: give num_heads (and num_key_value_heads) in the config, or prune "
                "through pk.Pruner / pk.prune, which read it from the model"
            )
        return unit_masks(
            self.units,
            self.weight_shapes,
            scores,
            target,
            scope="local" if self.config.pruning_scope == "local" else "global",
            min_ratio=self.config.min_sparsity_ratio_per_op,
            max_ratio=self.config.max_sparsity_ratio_per_op,
            how=self.options.criterion_reduce_type,
            pre_masks=pre_masks,
        )

    def unreachable(self, target: float, what: str = "target_sparsity") -> Any:
        return None  # the engine refuses an unreachable target, counted in weights

    def __repr__(self) -> str:
        return f"HeadPattern(blocks={len(self.blocks)})"


def _missing_message(missing: Mapping[str, list[str]]) -> str:
    module, names = next(iter(missing.items()))
    more = f" (and {len(missing) - 1} more blocks)" if len(missing) > 1 else ""
    return (
        f"pattern 'head': attention block {module!r} is selected without "
        f"{', '.join(map(repr, names))}{more}; a head is removed from its q, k, v and output "
        "projections together: select all of them (op_names), or none"
    )


def _width(module: nn.Module, out: bool) -> int:
    """Output (``out``) or input width of a Linear or a transposed Linear (Conv1D)."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    shape = weight.shape
    transposed = is_transposed_linear(module)
    return int(shape[1 if transposed == out else 0])


def _head_counts(
    block: AttentionBlock,
    modules: Mapping[str, nn.Module],
    options: HeadOptions,
    sources: tuple[Any, Any] | None,
) -> HeadCounts | None:
    """The block's head counts from the options, else the attention module, else the model
    config (``sources``); None when none says (before the model is bound)."""
    width = _width(modules[block.q], out=True) // (3 if block.fused else 1)
    kv_width = width if block.fused else _width(modules[block.k or block.q], out=True)
    queries = options.num_heads
    size = max(width // queries, 1) if queries else None
    if queries is None and sources is not None:
        size = _head_size(*sources, width)
    if size is None:
        return None
    groups = options.num_key_value_heads or kv_width // size
    counts = HeadCounts(queries or width // size, groups, size)
    _check_counts(block, counts, width, kv_width)
    return counts


def _head_size(module: Any, config: Any, width: int) -> int | None:
    """The channels of one head, from the attention module or the model's config."""
    for name in ("head_dim", "attention_head_size"):
        value = getattr(module, name, None)
        if isinstance(value, int) and value > 0:
            return value
    for owner in (module, getattr(module, "config", None), config):
        for name in ("num_heads", "num_attention_heads", "n_head"):
            value = getattr(owner, name, None)
            if isinstance(value, int) and value > 0 and width % value == 0:
                return width // value
    return None


def _check_counts(block: AttentionBlock, counts: HeadCounts, width: int, kv_width: int) -> None:
    """Refuse counts that do not tile the block's layers."""
    problems = []
    if counts.queries * counts.size != width:
        problems.append(f"{counts.queries} query heads do not divide its width {width}")
    if not block.fused and counts.groups * counts.size != kv_width:
        problems.append(
            f"{counts.groups} key/value heads of {counts.size} channels do not make its "
            f"key width {kv_width}"
        )
    if counts.queries % counts.groups:
        problems.append(f"{counts.queries} query heads do not split into {counts.groups} groups")
    if problems:
        raise IndivisibleShapeError(
            f"pattern 'head', attention block {block.module!r}: {'; '.join(problems)}; check "
            "num_heads and num_key_value_heads"
        )


def _out_dim(module: nn.Module) -> int:
    return 1 if is_transposed_linear(module) else 0


def _units(
    block: AttentionBlock, modules: Mapping[str, nn.Module], counts: HeadCounts
) -> VirtualOp:
    """The block's units (a query head, or a key/value head with its query heads) as
    slices: q, k, v rows and the output's columns."""
    per_group = counts.queries // counts.groups * counts.size
    width = counts.queries * counts.size
    queries = torch.arange(width)
    query_unit = queries // per_group
    keys = torch.arange(counts.groups * counts.size)
    key_unit = keys // counts.size
    pieces = []
    if block.fused:
        q = modules[block.q]
        unit = torch.cat([query_unit, query_unit, query_unit])
        pieces.append(Piece(block.q, _out_dim(q), torch.arange(3 * width), unit))
    else:
        assert block.k is not None and block.v is not None
        pieces.append(Piece(block.q, _out_dim(modules[block.q]), queries, query_unit))
        for name in (block.k, block.v):
            pieces.append(Piece(name, _out_dim(modules[name]), keys, key_unit))
    o = modules[block.o]
    pieces.append(Piece(block.o, 1 - _out_dim(o), queries, query_unit))
    return VirtualOp(counts.groups, tuple(pieces))


@hookimpl
def register_patterns(register: Register) -> None:
    register("head", HeadPattern)
