"""``pk.slim``: the channels, neurons and heads that masks removed, physically removed.

Masks alone make nothing faster on common hardware; a model with fewer channels is smaller
and faster everywhere. :func:`slim` traces the model on example inputs, finds the classes of
channels that must go together (:mod:`prunekit.slim.flow`), drops those whose producers are
all zero wherever a smaller model computes exactly the same function
(:mod:`prunekit.slim.decide`), folds the constants the dropped channels still carried into
the next layer's bias, rebuilds the layers smaller (:mod:`prunekit.slim.rebuild`) and checks
that the slimmed model's outputs equal the masked model's, putting everything back when they
do not.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from prunekit.errors import PrunekitError
from prunekit.masks.modules import held_masks, put_back, strip_masks
from prunekit.slim.attention import head_attributes
from prunekit.slim.decide import Decision, decide
from prunekit.slim.flow import Flow, channel_flow
from prunekit.slim.hf import remember_plan
from prunekit.slim.macs import macs
from prunekit.slim.plan import apply_plans, plan_json, restore
from prunekit.slim.rebuild import ModulePlan
from prunekit.slim.trace import ExampleInputs, TraceError, export

EXAMPLE_ATTRIBUTE = "_prunekit_example_inputs"


class SlimError(PrunekitError, RuntimeError):
    """A slimmed model that would not compute what the masked one does (nothing changed)."""


@dataclass(frozen=True)
class OpChange:
    """One parameter that got smaller."""

    name: str
    before: tuple[int, ...]
    after: tuple[int, ...]


@dataclass(frozen=True)
class KeptChannels:
    """Channels whose producers are all zero (or partly) but that stay, and why."""

    ops: tuple[str, ...]
    channels: int
    why: str


@dataclass
class SlimReport:
    """What :func:`slim` did: sizes before and after, per parameter old -> new shape, the
    channels kept and why, and the ``plan`` (plain JSON) that rebuilds a fresh model."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    changes: list[OpChange] = field(default_factory=list)
    kept: list[KeptChannels] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)

    @property
    def removed_channels(self) -> int:
        return sum(
            c.before[0] - c.after[0]
            for c in self.changes
            if c.name.endswith(".weight") and c.before[:1] != c.after[:1]
        )

    def table(self) -> Table:
        table = Table(title="prunekit slim", title_justify="left")
        for column in ("parameter", "before", "after"):
            table.add_column(column, overflow="fold")
        for change in self.changes:
            table.add_row(
                change.name, "x".join(map(str, change.before)), "x".join(map(str, change.after))
            )
        table.add_row("params", f"{self.params_before:,}", f"{self.params_after:,}", style="bold")
        table.add_row("MACs", f"{self.macs_before:,}", f"{self.macs_after:,}", style="bold")
        return table

    def __str__(self) -> str:
        console = Console(width=140, record=True, file=io.StringIO())
        console.print(self.table())
        for kept in self.kept:
            console.print(f"kept {kept.channels} channel(s) of {', '.join(kept.ops)}: {kept.why}")
        return console.export_text()


def slim(model: nn.Module, example_inputs: Any = None, *, tolerance: float = 1e-5) -> SlimReport:
    """Remove, in place, every channel, neuron and head of ``model`` that its masks (a
    Pruner's, or zeros baked into the weights) removed, wherever the smaller model computes
    the same function; return what changed.

    ``example_inputs``: what the model is called with (a tensor, a tuple, or a dict of
    keyword arguments); default: those a coupled Pruner was given. Masks are baked first
    (``pk.strip_masks``): a Pruner attached to the model is done with it. Raises
    :class:`SlimError` (and changes nothing) if the outputs would differ by more than
    ``tolerance`` (relative), :class:`~prunekit.slim.trace.TraceError` for a model
    torch.export cannot trace.
    """
    example = _example(model, example_inputs)
    held = held_masks(model)
    strip_masks(model)
    try:
        return _slim(model, example, tolerance)
    except Exception:
        put_back(held)  # a failure leaves the model's masks as they were
        raise


def _slim(model: nn.Module, example: ExampleInputs, tolerance: float) -> SlimReport:
    before = _measure(model, example)
    reference = _outputs(model, example)
    program = export(model, example)
    flow = channel_flow(program)
    decision = decide(model, flow, example)
    plans, deltas = _plans(model, flow, decision)
    changes = _changes(model, plans)
    replaced = apply_plans(model, plans)
    try:
        _add_folded(model, deltas, plans)
        _set_head_attributes(model, plans)
        _check_same(reference, _outputs(model, example), tolerance)
    except Exception:
        restore(model, replaced)
        raise
    after = _measure(model, example)
    plan = plan_json(plans)
    remember_plan(model, plan)
    return SlimReport(
        before[0], after[0], before[1], after[1], changes, _kept(flow, decision), plan
    )


def _example(model: nn.Module, example_inputs: Any) -> ExampleInputs:
    found = (
        example_inputs if example_inputs is not None else getattr(model, EXAMPLE_ATTRIBUTE, None)
    )
    if found is None:
        raise TraceError(
            "slim needs example_inputs: what the model is called with (a tensor, a tuple of "
            "arguments, or a dict of keyword arguments)"
        )
    return ExampleInputs.of(found)


def _measure(model: nn.Module, example: ExampleInputs) -> tuple[int, int]:
    params = sum(p.numel() for p in model.parameters())
    return params, macs(export(model, example))


def _outputs(model: nn.Module, example: ExampleInputs) -> list[Tensor]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [t.detach().clone() for t in _tensors(example.call(model))]
    finally:
        model.train(was_training)


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _check_same(reference: list[Tensor], slimmed: list[Tensor], tolerance: float) -> None:
    if len(reference) != len(slimmed):
        raise SlimError(f"the slimmed model returns {len(slimmed)} tensors, not {len(reference)}")
    for i, (want, got) in enumerate(zip(reference, slimmed, strict=True)):
        if want.shape != got.shape:
            raise SlimError(f"output {i}: shape {tuple(got.shape)}, not {tuple(want.shape)}")
        scale = float(want.abs().max()) if want.numel() else 0.0
        error = float((want - got).abs().max()) if want.numel() else 0.0
        if error > tolerance * max(scale, 1.0):
            raise SlimError(
                f"output {i}: the slimmed model differs from the masked one by {error:.3g} "
                f"(scale {scale:.3g}); nothing was changed. This is a bug in prunekit's "
                "channel analysis: please report it with the model"
            )


def _plans(
    model: nn.Module, flow: Flow, decision: Decision
) -> tuple[dict[str, ModulePlan], dict[str, Tensor]]:
    """Per module, what to keep; per module, what to add to its bias (folded constants)."""
    modules = dict(model.named_modules())
    drop: dict[str, dict[int, Tensor]] = defaultdict(dict)
    tensors: dict[str, Tensor] = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    for member in flow.members:
        dropped = decision.members_dropped(member)
        if bool(dropped.any()):
            previous = drop[member.name].get(member.dim)
            drop[member.name][member.dim] = dropped if previous is None else previous | dropped
    plans: dict[str, ModulePlan] = {}
    for name, dims in drop.items():
        owner, _, attribute = name.rpartition(".")
        plan = plans.setdefault(owner, ModulePlan(type(modules[owner]).__name__))
        plan.keep[attribute] = {
            dim: torch.nonzero(~flags).flatten().tolist() for dim, flags in dims.items()
        }
    deltas = _folds(modules, tensors, decision)
    for owner in deltas:
        plan = plans.setdefault(owner, ModulePlan(type(modules[owner]).__name__))
        plan.add_bias = getattr(modules[owner], "bias", None) is None
    return plans, deltas


def _folds(
    modules: Mapping[str, nn.Module], tensors: Mapping[str, Tensor], decision: Decision
) -> dict[str, Tensor]:
    """What each consumer adds to its bias for the constants of the channels it loses."""
    deltas: dict[str, Tensor] = {}
    for weight_name, constants in decision.constants.items():
        owner = weight_name.rpartition(".")[0]
        weight = tensors[weight_name].detach()
        module = modules[owner]
        for position, constant in constants.items():
            if constant == 0.0:
                continue
            if isinstance(module, nn.Linear):
                column = weight[:, position]
            elif isinstance(module, nn.modules.conv._ConvNd):
                column = weight[:, position].reshape(weight.shape[0], -1).sum(dim=1)
            else:  # a transposed Linear (Conv1D): weight (in, out)
                column = weight[position, :]
            deltas[owner] = deltas.get(owner, torch.zeros_like(column)) + constant * column
    return deltas


def _add_folded(
    model: nn.Module, deltas: Mapping[str, Tensor], plans: Mapping[str, ModulePlan]
) -> None:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for owner, delta in deltas.items():
            plan = plans[owner]
            bias = modules[owner].bias
            assert isinstance(bias, Tensor)
            keep = plan.keep.get("weight", {})
            out_dim = (
                1 if not isinstance(modules[owner], (nn.Linear, nn.modules.conv._ConvNd)) else 0
            )
            kept = keep.get(out_dim)
            bias.add_(delta if kept is None else delta[torch.tensor(kept, dtype=torch.long)])


def _set_head_attributes(model: nn.Module, plans: dict[str, ModulePlan]) -> None:
    """Attention blocks whose layers changed take the head counts of their new widths."""
    changed = set(plans)
    for name, module in model.named_modules():
        if not any(c.startswith(f"{name}.") for c in changed):
            continue
        attributes = head_attributes(module)
        differing = {k: v for k, v in attributes.items() if getattr(module, k) != v}
        if differing:
            for attribute, value in differing.items():
                setattr(module, attribute, value)
            plan = plans.setdefault(name, ModulePlan(type(module).__name__))
            plan.attributes.update(differing)


def _changes(model: nn.Module, plans: Mapping[str, ModulePlan]) -> list[OpChange]:
    tensors = dict(model.named_parameters(remove_duplicate=False))
    found = []
    for owner, plan in plans.items():
        for attribute, dims in plan.keep.items():
            name = f"{owner}.{attribute}" if owner else attribute
            tensor = tensors.get(name)
            if tensor is None:
                continue
            after = list(tensor.shape)
            for dim, kept in dims.items():
                after[dim] = len(kept)
            if tuple(after) != tuple(tensor.shape):
                found.append(OpChange(name, tuple(tensor.shape), tuple(after)))
    return found


def _kept(flow: Flow, decision: Decision) -> list[KeptChannels]:
    """Channels with all-zero (or partly zero) producers that stay, grouped by reason."""
    producers: dict[int, set[str]] = defaultdict(set)
    for member in flow.members:
        if member.role == "producer":
            for root in decision.roots[member.ids].tolist():
                producers[root].add(member.op)
    grouped: dict[tuple[tuple[str, ...], str], int] = defaultdict(int)
    for root, why in decision.kept.items():
        grouped[(tuple(sorted(producers.get(root, set()))), why)] += 1
    return [KeptChannels(ops, count, why) for (ops, why), count in sorted(grouped.items())]


__all__ = ["KeptChannels", "OpChange", "SlimError", "SlimReport", "slim"]
