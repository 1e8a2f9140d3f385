"""Pruning one unit (a block, or the ops outside the blocks) from its statistics.

A criterion that only scores (Wanda, or magnitude under OWL) gives each op's scores on
demand to its config's pattern (``iter_masks``: one op's scores and mask at a time), and each
mask is applied as it comes. A criterion that reconstructs (SparseGPT) prunes op by op: the
pattern is asked for each column block's mask (:mod:`prunekit.training.columns`), the
criterion updates the kept weights, and the new weight and its mask are applied. Every change
is recorded in the run's :class:`~prunekit.training.undo.Undo` just before it is made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

from prunekit.masks.modules import MASK_BUFFER
from prunekit.masks.pattern import Pattern
from prunekit.masks.select.memory import release_freed_memory
from prunekit.training.calibration_plan import CalibratedGroup, Unit
from prunekit.training.columns import selector
from prunekit.training.statistics import Collector, for_weight
from prunekit.training.undo import Undo

# (config index, op name, mask as stored): put the mask on the op and zero what it removes.
Apply = Callable[[int, str, Tensor], None]


def weight_of(module: nn.Module) -> Tensor:
    weight = getattr(module, "weight", None)
    assert isinstance(weight, Tensor)
    return weight


def current_mask(module: nn.Module) -> Tensor | None:
    mask = getattr(module, MASK_BUFFER, None)
    return mask if isinstance(mask, Tensor) else None


class OnDemandScores(Mapping[str, Tensor]):
    """Each op's scores computed when read and never kept: the criterion on its weight (and
    its statistics, for a criterion that reads them)."""

    def __init__(
        self, cg: CalibratedGroup, ops: Mapping[str, nn.Module], collector: Collector | None
    ) -> None:
        self.cg, self.ops, self.collector = cg, ops, collector

    def __getitem__(self, name: str) -> Tensor:
        module = self.ops[name]
        weight = weight_of(module).detach()
        group = self.cg.group
        if not self.cg.reads_data:
            return group.criterion(weight, grad=None, state=None, generator=group.generator)
        assert self.collector is not None
        statistics = for_weight(module, self.collector.results(name))
        return group.criterion(weight, statistics=statistics, options=self.cg.options)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)


def prune_unit(
    unit: Unit,
    groups: Mapping[int, CalibratedGroup],
    targets: Mapping[int, float],
    collector: Collector | None,
    apply: Apply,
    undo: Undo,
) -> None:
    """Prune every config's ops in ``unit`` to its target there (``targets``: config index
    -> target; configs absent are not pruned now)."""
    for index, ops in unit.ops.items():
        if index not in targets:
            continue
        cg = groups[index]
        if cg.reconstruct is not None:
            assert collector is not None
            _reconstruct(unit, cg, ops, targets[index], collector, apply, undo)
        else:
            _mask(unit, cg, ops, targets[index], collector, apply, undo)
        if collector is not None:
            collector.release(set(ops))


def _mask(
    unit: Unit,
    cg: CalibratedGroup,
    ops: Mapping[str, nn.Module],
    target: float,
    collector: Collector | None,
    apply: Apply,
    undo: Undo,
) -> None:
    pattern = unit.patterns[cg.index]
    pre = {name: m for name, module in ops.items() if (m := current_mask(module)) is not None}
    scores: Mapping[str, Tensor] = OnDemandScores(cg, ops, collector)
    found: Iterable[tuple[str, Tensor]]
    if type(pattern).get_masks is not Pattern.get_masks:  # a pattern that chooses itself
        scores = {name: scores[name] for name in pattern.weight_shapes}
        found = pattern.get_masks(scores, target, pre_masks=pre or None).items()
    else:  # one op's scores and mask at a time
        found = pattern.iter_masks(scores, target, pre_masks=pre or None)
    for name, mask in found:
        if bool(mask.all()) and name not in pre:
            continue  # nothing removed, nothing to attach
        undo.masked(ops[name], mask)
        apply(cg.index, name, mask)
        elements = mask.numel()
        del mask
        release_freed_memory(elements)  # an op's scores and mask buffers, before the next


def _reconstruct(
    unit: Unit,
    cg: CalibratedGroup,
    ops: Mapping[str, nn.Module],
    target: float,
    collector: Collector,
    apply: Apply,
    undo: Undo,
) -> None:
    pattern = unit.patterns[cg.index]
    assert cg.reconstruct is not None
    done: set[str] = set()
    for name, module in ops.items():
        done.add(name)
        if name in pattern.skipped:
            continue
        transposed = name in pattern.transposed
        weight = weight_of(module)
        pre = current_mask(module)
        view = weight.t() if transposed else weight
        choose = selector(
            pattern,
            cg.group.config,
            name,
            target,
            None if pre is None else (pre.t() if transposed else pre),
        )
        statistics = collector.results(name)
        if any(other not in done for other in collector.sharing(name)):
            statistics = {k: v.clone() for k, v in statistics.items()}  # damped in place
        rebuilt = cg.reconstruct(view.detach(), statistics, cg.options, choose, name)
        kept = choose.mask()
        undo.rewritten(module)
        with torch.no_grad():
            view.copy_(rebuilt.to(weight.dtype))
        apply(cg.index, name, kept.t().contiguous() if transposed else kept)
        del rebuilt, statistics
        collector.release(done)
        release_freed_memory(weight.numel())
