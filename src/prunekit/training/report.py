"""What a Pruner did, per op and in total: a dataclass, a rich table, and JSON."""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class OpReport:
    """One op: its pattern, the target in force, and the sparsity it really has.

    ``target`` is the config's current target (under global scope it is the target of the
    whole group, so one op may sit above or below it); ``achieved`` counts the op's removed
    weights. ``hardware_valid`` is True/False for N:M-style patterns and None where it does
    not apply. ``note`` says why an op was skipped or what else to know.
    """

    name: str
    config: int
    pattern: str
    scope: str
    module: str
    shape: tuple[int, ...]
    elements: int
    removed: int
    target: float
    hardware_valid: bool | None = None
    note: str = ""

    @property
    def achieved(self) -> float:
        return self.removed / self.elements if self.elements else 0.0


def op_report(
    group: Any,
    name: str,
    module: Any,
    shape: tuple[int, ...],
    removed: int,
    target: float,
    hardware_valid: bool | None = None,
    note: str = "",
) -> OpReport:
    """Op ``name`` of ``group`` (a Pruner's config group) as a report row; an op its
    pattern leaves out gets its reason, prefixed ``skipped:``."""
    skipped = group.pattern.skipped.get(name)
    return OpReport(
        name=name,
        config=group.index,
        pattern=group.config.pattern,
        scope=group.config.pruning_scope,
        module=type(module).__name__,
        shape=shape,
        elements=math.prod(shape),
        removed=removed,
        target=target,
        hardware_valid=hardware_valid,
        note=f"skipped: {skipped}" if skipped is not None else note,
    )


@dataclass(frozen=True)
class LayerReport:
    """One unit of a calibration run (a repeated block, or the ops outside the blocks): the
    target one config had there, and its outlier ratio when OWL chose that target."""

    unit: str
    config: int
    target: float
    elements: int
    outlier_ratio: float | None = None


def calibration_layers(calibration: Any) -> tuple[LayerReport, ...]:
    """The layer reports of a calibration run (anything with ``layer_targets``)."""
    return tuple(
        LayerReport(t.unit, t.config, t.target, t.elements, t.outlier_ratio)
        for t in getattr(calibration, "layer_targets", ())
    )


@dataclass(frozen=True)
class PruningReport:
    """Every op's report and the totals, at one step of a Pruner; ``layers``: the target of
    each repeated block in a calibration run (OWL's chosen targets)."""

    step: int
    ops: tuple[OpReport, ...] = field(default_factory=tuple)
    layers: tuple[LayerReport, ...] = field(default_factory=tuple)

    @property
    def elements(self) -> int:
        return sum(op.elements for op in self.ops)

    @property
    def removed(self) -> int:
        return sum(op.removed for op in self.ops)

    @property
    def achieved(self) -> float:
        return self.removed / self.elements if self.elements else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "elements": self.elements,
            "removed": self.removed,
            "achieved": self.achieved,
            "ops": [
                {**asdict(op), "shape": list(op.shape), "achieved": op.achieved} for op in self.ops
            ],
            "layers": [asdict(layer) for layer in self.layers],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> Table:
        """A rich table: one row per op, then the total."""
        table = Table(title=f"prunekit report, step {self.step}", title_justify="left")
        for column in (
            "op",
            "config",
            "pattern",
            "module",
            "shape",
            "target",
            "achieved",
            "hardware",
            "note",
        ):
            table.add_column(
                column,
                justify="right" if column in {"target", "achieved"} else "left",
                overflow="fold",
            )
        for op in self.ops:
            valid = "-" if op.hardware_valid is None else ("valid" if op.hardware_valid else "no")
            table.add_row(
                op.name,
                str(op.config),
                f"{op.pattern} ({op.scope})",
                op.module,
                "x".join(map(str, op.shape)),
                f"{op.target:.1%}",
                f"{op.achieved:.2%}",
                valid,
                op.note,
            )
        table.add_row(
            "total",
            "",
            "",
            "",
            f"{self.elements} weights",
            "",
            f"{self.achieved:.2%}",
            "",
            f"{self.removed} removed",
            style="bold",
        )
        return table

    def layer_table(self) -> Table:
        """A rich table of the calibration run's per-block targets."""
        table = Table(title="targets per block (calibration)", title_justify="left")
        for column in ("block", "config", "weights", "target", "outlier ratio"):
            table.add_column(column, justify="left" if column == "block" else "right")
        for layer in self.layers:
            ratio = "-" if layer.outlier_ratio is None else f"{layer.outlier_ratio:.3%}"
            table.add_row(
                layer.unit, str(layer.config), str(layer.elements), f"{layer.target:.2%}", ratio
            )
        return table

    def __str__(self) -> str:
        console = Console(width=140, record=True, file=io.StringIO())
        console.print(self.table())
        if self.layers:
            console.print(self.layer_table())
        return console.export_text()
