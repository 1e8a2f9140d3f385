"""What a calibration run will do, decided and checked before it changes anything.

From the Pruner's groups: which configs calibrate (their criterion reads statistics, or
their ``layer_sparsity`` is ``"owl"``), whether the run is sequential and over which
repeated blocks, and the units pruned one after another: each block with the ops of every
calibrating config inside it, then the ops outside the blocks; or, not sequential, the
whole model at once (one unit per block still, for OWL's per-block targets). Each unit gets
its own pattern per config (the config's pattern on the unit's ops). Everything that can be
refused is refused here: a criterion that reads calibration data without it, ops that are
not Linear, configs that disagree on the blocks, a pattern a reconstructing criterion
cannot apply column block by column block.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from torch import Tensor, nn

from prunekit.config.criterion_options import options_model
from prunekit.errors import CalibrationError
from prunekit.masks.pattern import Pattern
from prunekit.training.blocks import Blocks, find_blocks
from prunekit.training.columns import check_columns
from prunekit.training.groups import Group
from prunekit.training.statistics import check_statistic_names, in_features

REST = "outside the blocks"


@dataclass
class CalibratedGroup:
    """One calibrating config: what its criterion reads and does."""

    group: Group
    statistics: tuple[str, ...]  # read by its criterion (empty: masks ignore the data)
    options: BaseModel | None
    reconstruct: Callable[..., Tensor] | None
    owl: bool

    @property
    def index(self) -> int:
        return self.group.index

    @property
    def reads_data(self) -> bool:
        return bool(self.statistics)


@dataclass
class Unit:
    """Ops pruned together: one block's (``block`` its index) or those outside the blocks,
    or the whole model's; per config index, its ops here and its pattern on them."""

    label: str
    block: int | None
    ops: dict[int, dict[str, nn.Module]] = field(default_factory=dict)
    patterns: dict[int, Pattern] = field(default_factory=dict)

    def all_ops(self) -> dict[str, nn.Module]:
        return {name: m for ops in self.ops.values() for name, m in ops.items()}


def calibrated(group: Group) -> CalibratedGroup | None:
    """The group as a calibrating config, or None when it needs no calibration data."""
    criterion = group.criterion
    statistics = tuple(getattr(criterion, "statistics", ()) or ())
    owl = group.config.layer_sparsity == "owl"
    if not statistics and not owl:
        return None
    check_statistic_names(group.config.criterion, statistics)
    model = options_model(criterion)
    options = model.model_validate(group.config.criterion_options) if model else None
    return CalibratedGroup(group, statistics, options, getattr(criterion, "reconstruct", None), owl)


def check_groups(groups: list[CalibratedGroup]) -> None:
    """Refuse what calibration cannot do with these configs, naming the config and op."""
    for cg in groups:
        for name, module in cg.group.ops.items():
            in_features(name, module)
        if cg.reconstruct is not None:
            pattern = cg.group.pattern
            if type(pattern).layout is Pattern.layout:
                raise CalibrationError(
                    f"config {cg.index}: pattern {cg.group.config.pattern!r} chooses its masks "
                    "itself (it has no block layout), so criterion "
                    f"{cg.group.config.criterion!r}, which reconstructs column block by "
                    "column block, cannot ask it for one column block's mask; use criterion "
                    "'wanda', or a block pattern"
                )
            blocksize = int(getattr(cg.options, "blocksize", 128))
            for name, layout in cg.group.pattern.layouts.items():
                check_columns(cg.group.pattern, cg.group.config, name, layout, blocksize)
    first = groups[0].group.config
    for cg in groups[1:]:
        config = cg.group.config
        if (config.sequential, config.sequential_blocks) != (
            first.sequential,
            first.sequential_blocks,
        ):
            raise CalibrationError(
                f"configs {groups[0].index} and {cg.index} calibrate differently (sequential "
                f"{first.sequential!r} / {config.sequential!r}, sequential_blocks "
                f"{first.sequential_blocks!r} / {config.sequential_blocks!r}); calibration "
                "runs once through the model, so give them the same values"
            )


def choose_blocks(model: nn.Module, groups: list[CalibratedGroup]) -> tuple[Blocks | None, bool]:
    """The repeated blocks and whether the run is sequential (see the config fields
    ``sequential`` and ``sequential_blocks``)."""
    config = groups[0].group.config
    ops = [name for cg in groups for name in cg.group.ops]
    blocks = find_blocks(model, ops, config.sequential_blocks)
    sequential = config.sequential if config.sequential is not None else blocks is not None
    if sequential and blocks is None:
        raise CalibrationError(
            "sequential: true, but no list of repeated blocks in the model holds a selected "
            "op; name them with sequential_blocks ('model.layers'), or set sequential: false"
        )
    if any(cg.owl for cg in groups) and blocks is None:
        raise CalibrationError(
            "layer_sparsity 'owl' sets a target per repeated block, but no list of repeated "
            "blocks in the model holds a selected op; name them with sequential_blocks"
        )
    coupled = [cg.index for cg in groups if cg.group.config.coupled]
    if sequential and coupled:
        raise CalibrationError(
            f"config {coupled[0]}: coupled pruning compares channels across the whole model, "
            "so it cannot run block by block; set sequential: false"
        )
    return blocks, sequential


def build_units(
    model: nn.Module, groups: list[CalibratedGroup], blocks: Blocks | None, sequential: bool
) -> list[Unit]:
    """The units, in the order they are pruned (see the module's docstring)."""
    per_block = sequential or any(cg.owl for cg in groups)
    if blocks is None or not per_block:
        units = [Unit("model", None)]
    else:
        units = [Unit(name, i) for i, name in enumerate(blocks.names)] + [Unit(REST, None)]
    for cg in groups:
        for name, module in cg.group.ops.items():
            at = blocks.owner(name) if blocks is not None and per_block else None
            unit = units[-1] if at is None else units[at]
            unit.ops.setdefault(cg.index, {})[name] = module
    units = [unit for unit in units if unit.ops]
    for unit in units:
        for cg in groups:
            ops = unit.ops.get(cg.index)
            if ops:
                unit.patterns[cg.index] = unit_pattern(model, cg.group, ops)
    return units


def unit_pattern(model: nn.Module, group: Group, ops: Mapping[str, nn.Module]) -> Pattern:
    """The config's pattern on ``ops`` (the group's own when they are all its ops; its
    warnings about skipped ops were given when the group was built)."""
    if list(ops) == list(group.ops):
        return group.pattern
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pattern = type(group.pattern)(group.config, ops)
    bind: Any = getattr(pattern, "bind_model", None)
    if callable(bind):
        bind(model)
    return pattern
