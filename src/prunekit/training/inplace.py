"""Pruning in place, keeping no masks: for a model whose masks do not fit beside it.

A :class:`~prunekit.Pruner` keeps a bool mask per weight on every op (one byte per weight:
6.6 GB for a LLaMA-7B, half its bf16 weights again). :func:`prune_in_place` makes the same
masks (the same configs, patterns, criteria, calibration) but only multiplies them into the
weights, one op at a time, and returns the report; the zeros are the masks from then on
(``pk.Pruner(model, config)`` later starts from a plain model). What a failure would need to
put back (the removed values, and a whole weight a criterion rewrites) goes to files in a
temporary directory (or ``undo_dir``), never to memory, and is deleted when the run ends.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.config.files import ConfigSource
from prunekit.errors import PrunekitError
from prunekit.plugins.host import PluginHost
from prunekit.training.calibration import Calibration
from prunekit.training.groups import Group, checked_groups
from prunekit.training.report import PruningReport, calibration_layers, op_report
from prunekit.training.undo import Undo
from prunekit.training.unit_pruning import weight_of


class _Scores(Mapping[str, Tensor]):
    """A config's criterion on each op's weight, computed when read and never kept."""

    def __init__(self, group: Group) -> None:
        self.group = group

    def __getitem__(self, name: str) -> Tensor:
        weight = weight_of(self.group.ops[name]).detach()
        return self.group.criterion(weight, grad=None, state=None, generator=self.group.generator)

    def __iter__(self) -> Iterator[str]:
        return iter(self.group.ops)

    def __len__(self) -> int:
        return len(self.group.ops)


def _checked_groups(
    model: nn.Module, configs: ConfigSource | Sequence[ConfigSource], host: PluginHost | None
) -> list[Group]:
    """The configs' groups (:func:`checked_groups`), and no criterion needing gradients."""
    groups = checked_groups(model, configs, host, None)
    for group in groups:
        if group.needs_grad:
            raise PrunekitError(
                f"config {group.index}: criterion {group.config.criterion!r} needs gradients; "
                "prune_in_place prunes without a backward pass: use pk.prune"
            )
    return groups


def prune_in_place(
    model: nn.Module,
    config: ConfigSource | Sequence[ConfigSource],
    *,
    calibration_data: Any = None,
    calibration_device: Any = None,
    host: PluginHost | None = None,
    undo_dir: str | os.PathLike[str] | None = None,
) -> PruningReport:
    """Prune ``model`` to each config's target in one shot, as :func:`prunekit.prune` does,
    but with the masks multiplied into the weights and not kept (see the module's docstring).
    Everything is checked before the model changes, and a failure part-way puts every weight
    back. Returns the report (per op: target, weights removed)."""
    groups = _checked_groups(model, config, host)
    calibration = Calibration.plan(model, groups, calibration_data, calibration_device)
    removed: dict[str, int] = {}
    valid: dict[str, bool | None] = {}

    def apply(index: int, name: str, mask: Tensor) -> None:
        weight = weight_of(groups[index].ops[name])
        with torch.no_grad():
            weight.mul_(mask.to(weight.device))
        removed[name] = int(mask.numel() - int(torch.count_nonzero(mask)))
        valid[name] = groups[index].pattern.is_hardware_valid(name, mask)

    with tempfile.TemporaryDirectory(dir=undo_dir, prefix="prunekit-undo-") as directory:
        undo = Undo(directory)
        try:
            for group in groups:
                if calibration is None or not calibration.handles(group.index):
                    _prune_plain(group, apply, undo)
            if calibration is not None:
                goals = {g.index: g.config.target_sparsity for g in groups}
                calibration.run(
                    {i: t for i, t in goals.items() if calibration.handles(i)}, apply, undo
                )
        except BaseException:
            undo.rollback()
            raise
        undo.forget()
    return _report(groups, removed, valid, calibration)


def _prune_plain(group: Group, apply: Any, undo: Undo) -> None:
    """A config without calibration: its masks one op at a time (``iter_masks``)."""
    target = group.config.target_sparsity
    for name, mask in group.pattern.iter_masks(_Scores(group), target):
        if bool(mask.all()):
            continue
        undo.masked(group.ops[name], mask)
        apply(group.index, name, mask)


def _report(
    groups: Sequence[Group],
    removed: Mapping[str, int],
    valid: Mapping[str, bool | None],
    calibration: Calibration | None,
) -> PruningReport:
    ops = []
    targets = {} if calibration is None else calibration.op_targets
    for group in groups:
        for name, module in group.ops.items():
            shape = tuple(weight_of(module).shape)
            target = targets.get(name, group.config.target_sparsity)
            ops.append(
                op_report(
                    group, name, module, shape, removed.get(name, 0), target, valid.get(name)
                )
            )
    layers = () if calibration is None else calibration_layers(calibration)
    return PruningReport(step=0, ops=tuple(ops), layers=layers)
