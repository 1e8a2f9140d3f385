"""One-shot pruning from calibration data: the run, from its plan to pruned units.

:meth:`Calibration.plan` decides and checks everything (:mod:`prunekit.training.calibration_plan`);
:meth:`Calibration.run` then, in eval mode without autograd or a key/value cache:

1. prunes the configs whose masks ignore the data (magnitude under OWL) once their targets
   are known, and finds the targets: the config's, or with ``layer_sparsity: "owl"`` one per
   block from the blocks' outlier ratios on the dense model (a first pass, block by block);
2. sequential: runs the blocks one after another (:func:`~prunekit.training.sequential.
   block_pass`), each pruned from its own statistics before it makes the next block's
   inputs, then the ops outside the blocks from one pass of the whole (pruned) model; not
   sequential: one pass of the dense model gives every op's statistics, then every unit is
   pruned.

Every change goes through the caller's ``apply`` and is recorded in its ``Undo`` first, so a
failure anywhere leaves the model as it was.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.errors import CalibrationError, PruningWarning
from prunekit.training.batches import Call, calibrating, calls_of
from prunekit.training.blocks import Blocks
from prunekit.training.calibration_plan import (
    CalibratedGroup,
    Unit,
    build_units,
    calibrated,
    check_groups,
    choose_blocks,
)
from prunekit.training.groups import Group
from prunekit.training.owl import outlier_ratio, owl_targets
from prunekit.training.sequential import block_pass, model_pass
from prunekit.training.statistics import Collector, for_weight
from prunekit.training.undo import Undo
from prunekit.training.unit_pruning import Apply, prune_unit, weight_of

Targets = dict[str, dict[int, float]]  # unit label -> config index -> target


@dataclass(frozen=True)
class LayerTarget:
    """The target one config had in one unit (a block, or the ops outside the blocks), and
    the unit's outlier ratio when OWL chose it."""

    unit: str
    config: int
    target: float
    elements: int
    outlier_ratio: float | None = None


class Calibration:
    """A checked plan of calibration for a Pruner's groups (see the module's docstring)."""

    def __init__(
        self,
        model: nn.Module,
        groups: list[CalibratedGroup],
        blocks: Blocks | None,
        sequential: bool,
        calls: list[Call],
        device: torch.device | None,
    ) -> None:
        self.model, self.blocks, self.sequential = model, blocks, sequential
        self.groups = {cg.index: cg for cg in groups}
        self.units: list[Unit] = build_units(model, groups, blocks, sequential)
        self.calls, self.device = calls, device
        self.layer_targets: list[LayerTarget] = []
        self.op_targets: dict[str, float] = {}

    @classmethod
    def plan(
        cls, model: nn.Module, groups: Sequence[Group], data: Any, device: Any = None
    ) -> Calibration | None:
        """The plan for ``groups``, or None when none of them calibrates."""
        found = [cg for group in groups if (cg := calibrated(group)) is not None]
        if not found:
            if data is not None:
                warnings.warn(
                    "calibration_data is given but no config reads it (no calibration "
                    "criterion such as 'wanda' or 'sparsegpt', no layer_sparsity 'owl'); it "
                    "is ignored",
                    PruningWarning,
                    stacklevel=3,
                )
            return None
        if data is None:
            cg = found[0]
            what = (
                f"criterion {cg.group.config.criterion!r}"
                if cg.reads_data
                else "layer_sparsity 'owl'"
            )
            raise CalibrationError(
                f"config {cg.index}: {what} reads the ops' inputs on calibration data; pass "
                "calibration_data=[batch, ...] (model inputs: tensors, tuples or dicts) to "
                "pk.prune or pk.Pruner"
            )
        check_groups(found)
        blocks, sequential = choose_blocks(model, found)
        return cls(model, found, blocks, sequential, calls_of(data), _device(device))

    def handles(self, index: int) -> bool:
        """Whether config ``index`` is pruned by calibration."""
        return index in self.groups

    def run(self, goals: Mapping[int, float], apply: Apply, undo: Undo) -> None:
        """Prune the calibrating configs in ``goals`` (config index -> target)."""
        active = {i: cg for i, cg in self.groups.items() if i in goals}
        if not active:
            return
        with calibrating(self.model):
            targets = self._targets(active, goals)
            self._check(targets)
            for unit in self.units:  # masks that ignore the data: now, before the passes
                static = {i: t for i, t in targets[unit.label].items() if not active[i].reads_data}
                prune_unit(unit, active, static, None, apply, undo)
            if any(cg.reads_data for cg in active.values()):
                self._prune(active, targets, apply, undo)

    # -- targets ------------------------------------------------------------------------------
    def _targets(
        self, active: Mapping[int, CalibratedGroup], goals: Mapping[int, float]
    ) -> Targets:
        """Each unit's target per config: the goal, or OWL's per block."""
        targets: Targets = {
            u.label: {i: goals[i] for i in u.ops if i in active} for u in self.units
        }
        owl = [i for i, cg in active.items() if cg.owl]
        ratios = self._outlier_ratios(owl) if owl else {}
        for index in owl:
            self._owl(index, goals[index], ratios, targets)
        self._record(targets, ratios)
        return targets

    def _outlier_ratios(self, owl: list[int]) -> dict[tuple[str, int], float]:
        """Each block's outlier ratio per OWL config, on the dense model."""
        units = [u for u in self.units if u.block is not None]
        ratios: dict[tuple[str, int], float] = {}

        def take(unit: Unit, collector: Collector) -> None:
            for index in owl:
                ops = unit.ops.get(index, {})
                if ops:
                    ratios[(unit.label, index)] = outlier_ratio(
                        _WandaScores(ops, collector), self.groups[index].group.config.owl_m
                    )

        def needs(unit: Unit) -> dict[str, tuple[str, ...]]:
            return {n: ("input_norms",) for i in owl for n in unit.ops.get(i, {})}

        if self.sequential:
            self._blocks(units, needs, take, prunes=False)
        else:
            everything = {n: m for u in units for n, m in u.all_ops().items()}
            collector = model_pass(self.model, self.calls, everything, _union(needs, units))
            for unit in units:
                take(unit, collector)
        return ratios

    def _owl(
        self, index: int, goal: float, ratios: Mapping[tuple[str, int], float], targets: Targets
    ) -> None:
        """OWL's targets for config ``index`` over the blocks that hold its ops."""
        config = self.groups[index].group.config
        units = [u for u in self.units if u.block is not None and index in u.ops]
        elements = torch.tensor([_elements(u.ops[index]) for u in units], dtype=torch.float64)
        reach = [
            min(config.max_sparsity_ratio_per_op, u.patterns[index].reachable_sparsity())
            for u in units
        ]
        chosen = owl_targets(
            torch.tensor([ratios[(u.label, index)] for u in units]),
            elements,
            goal,
            config.owl_lambda,
            torch.full((len(units),), config.min_sparsity_ratio_per_op),
            torch.tensor(reach),
        )
        for unit, target in zip(units, chosen.tolist(), strict=True):
            targets[unit.label][index] = target

    def _record(self, targets: Targets, ratios: Mapping[tuple[str, int], float]) -> None:
        """What the report says: each unit's target per config, and each op's."""
        self.layer_targets = [
            LayerTarget(u.label, i, t, _elements(u.ops[i]), ratios.get((u.label, i)))
            for u in self.units
            for i, t in targets[u.label].items()
        ]
        self.op_targets.update(
            {name: t for u in self.units for i, t in targets[u.label].items() for name in u.ops[i]}
        )

    def _check(self, targets: Targets) -> None:
        """Every unit's target, checked against its pattern before anything changes."""
        for unit in self.units:
            for index, target in targets[unit.label].items():
                pattern = unit.patterns[index]
                pattern.check_target(target)
                if pattern.config.pruning_scope == "global":
                    problem = pattern.unreachable(target)
                    if problem is not None:
                        raise type(problem)(f"config {index}, {unit.label}: {problem}")

    # -- pruning ------------------------------------------------------------------------------
    def _prune(
        self, active: Mapping[int, CalibratedGroup], targets: Targets, apply: Apply, undo: Undo
    ) -> None:
        """The configs whose masks read the data, unit by unit (see the module's docstring)."""
        data = {i: cg for i, cg in active.items() if cg.reads_data}

        def needs(unit: Unit) -> dict[str, tuple[str, ...]]:
            return {n: data[i].statistics for i, ops in unit.ops.items() if i in data for n in ops}

        def prune(unit: Unit, collector: Collector) -> None:
            wanted = {i: t for i, t in targets[unit.label].items() if i in data}
            prune_unit(unit, active, wanted, collector, apply, undo)

        blocks = [u for u in self.units if u.block is not None]
        rest = [u for u in self.units if u.block is None]
        if self.sequential and blocks:
            self._blocks(blocks, needs, prune, prunes=True)
        units = rest if self.sequential and blocks else self.units
        if not units:
            return
        everything = {n: m for u in units for n, m in u.all_ops().items()}
        collector = model_pass(self.model, self.calls, everything, _union(needs, units))
        for unit in units:
            prune(unit, collector)

    def _blocks(
        self,
        units: Sequence[Unit],
        needs: Callable[[Unit], dict[str, tuple[str, ...]]],
        on_unit: Callable[[Unit, Collector], None],
        *,
        prunes: bool,
    ) -> None:
        """A sequential pass over the blocks, ``on_unit`` called with each block unit's
        statistics (blocks without a unit just run)."""
        assert self.blocks is not None
        by_block = {u.block: u for u in units}

        def needs_of(block: int) -> tuple[dict[str, nn.Module], dict[str, tuple[str, ...]]]:
            unit = by_block.get(block)
            return ({}, {}) if unit is None else (unit.all_ops(), needs(unit))

        block_pass(
            self.model, self.blocks, self.calls, self.device, needs_of,
            lambda block, collector: on_unit(by_block[block], collector),
            prunes=prunes, outputs_after_last=False,
        )  # fmt: skip


class _WandaScores:
    """Called, yields each op's |w| * ||x|| (OWL's scores), one op at a time."""

    def __init__(self, ops: Mapping[str, nn.Module], collector: Collector) -> None:
        self.ops, self.collector = ops, collector

    def __call__(self) -> Iterator[Tensor]:
        for name, module in self.ops.items():
            norms = for_weight(module, self.collector.results(name))["input_norms"]
            yield weight_of(module).detach().abs().to(torch.float32) * norms.to(torch.float32)


def _union(needs: Any, units: Sequence[Unit]) -> dict[str, tuple[str, ...]]:
    merged: dict[str, tuple[str, ...]] = {}
    for unit in units:
        merged.update(needs(unit))
    return merged


def _elements(ops: Mapping[str, nn.Module]) -> int:
    return sum(weight_of(m).numel() for m in ops.values())


def _device(device: Any) -> torch.device | None:
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise CalibrationError(
            f"calibration_device: {device!r} is not a device ('cpu', 'cuda', 'cuda:1'): {error}"
        ) from None
