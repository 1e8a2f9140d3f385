"""Which channels a smaller model drops, and why the others stay.

A class of tied channels (:mod:`prunekit.slim.flow`) is dropped when every one of its
producers' slices is all zero (masks or zeros baked into the weights), nothing pins it,
no tensor that spans it must keep its size, and every consumer can absorb what the class
still carries: a removed channel's value is then a constant (biases through BatchNorm and
activations), and a constant folds exactly into a Linear's bias, or into a conv's when the
conv does not pad with zeros (at the borders a zero-padded conv would see 0 instead of the
constant). The constants are read, not derived: the masked model runs once on the example
inputs and each consumer's input is recorded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from prunekit.slim.flow import Flow, Member
from prunekit.slim.trace import ExampleInputs

# A channel is constant when its values differ by no more than this (relative).
_CONSTANT = 1e-6


@dataclass
class Decision:
    """Per class root: dropped or not, and the reasons channels with all-zero producers
    stay (class root -> reason)."""

    roots: Tensor  # class root of every channel id
    dropped: Tensor  # bool per class root id (indexed by root)
    kept: dict[int, str] = field(default_factory=dict)
    constants: dict[str, dict[int, float]] = field(default_factory=dict)  # consumer -> pos -> c

    def members_dropped(self, member: Member) -> Tensor:
        """Bool per position of ``member``'s dim: dropped."""
        return self.dropped[self.roots[member.ids]]


def decide(model: nn.Module, flow: Flow, example: ExampleInputs) -> Decision:
    """What to drop: classes whose producers are all zero, unless something keeps them."""
    params: dict[str, Tensor] = dict(model.named_parameters(remove_duplicate=False))
    params.update(dict(model.named_buffers(remove_duplicate=False)))
    roots = flow.ties.classes()
    count = roots.numel()
    zero = torch.ones(count, dtype=torch.bool)
    produced = torch.zeros(count, dtype=torch.bool)
    for member in flow.members:
        if member.role != "producer":
            continue
        flags = _zero_slices(params[member.name], member.dim)
        at = roots[member.ids]
        produced[at] = True
        zero.scatter_reduce_(0, at, flags, reduce="amin")
    decision = Decision(roots, zero & produced)
    _pin(decision, flow)
    _partly_used(decision, flow, params)
    _keep_sizes(decision, flow)
    _fold_constants(decision, flow, model, example)
    return decision


def _zero_slices(tensor: Tensor, dim: int) -> Tensor:
    """Bool per position of ``dim``: every element of that slice is zero."""
    data = tensor.detach().movedim(dim, 0).reshape(tensor.shape[dim], -1)
    return ~(data != 0).any(dim=1)


def _pin(decision: Decision, flow: Flow) -> None:
    for ids, why in flow.pins:
        for root in torch.unique(decision.roots[ids]).tolist():
            if decision.dropped[root]:
                decision.kept[root] = why
            decision.dropped[root] = False


def _partly_used(decision: Decision, flow: Flow, params: Mapping[str, Tensor]) -> None:
    """Classes where some producers are zero and others not: say which op still produces
    them (the channels a coupled op keeps)."""
    zero_somewhere: dict[int, list[str]] = defaultdict(list)
    live_somewhere: dict[int, list[str]] = defaultdict(list)
    for member in flow.members:
        if member.role != "producer":
            continue
        flags = _zero_slices(params[member.name], member.dim)
        for root, is_zero in zip(decision.roots[member.ids].tolist(), flags.tolist(), strict=True):
            (zero_somewhere if is_zero else live_somewhere)[root].append(member.op)
    for root, zero_ops in zero_somewhere.items():
        if root in live_somewhere and root not in decision.kept:
            users = sorted(set(live_somewhere[root]))
            decision.kept[root] = (
                f"tied to channels {', '.join(map(repr, users[:3]))} still produces "
                f"(removed in {', '.join(map(repr, sorted(set(zero_ops))[:3]))} only)"
            )


def _keep_sizes(decision: Decision, flow: Flow) -> None:
    """A dim a computed tensor spans keeps every position: a position whose channels would
    all go keeps them (repeated: keeping some can make others' positions whole again)."""
    changed = True
    while changed:
        changed = False
        for per_position, why in flow.keeps:
            gone = decision.dropped[decision.roots[per_position]].all(dim=1)
            if bool(gone.any()):
                for root in torch.unique(decision.roots[per_position[gone]]).tolist():
                    decision.dropped[root] = False
                    decision.kept.setdefault(root, why)
                changed = True


def _fold_constants(
    decision: Decision, flow: Flow, model: nn.Module, example: ExampleInputs
) -> None:
    """Read what each consumer sees of the dropped channels; keep those it cannot absorb."""
    consumers = [m for m in flow.members if m.role == "consumer"]
    modules = dict(model.named_modules())
    params: dict[str, Tensor] = dict(model.named_parameters(remove_duplicate=False))
    wanted = {_owner(m.name) for m in consumers if bool(decision.members_dropped(m).any())}
    seen = _record_inputs(model, {n: modules[n] for n in wanted if n in modules}, example)
    for member in consumers:
        owner = _owner(member.name)
        dropped = decision.members_dropped(member)
        if not bool(dropped.any()) or owner not in seen:
            continue
        values = _channel_values(modules[owner], seen[owner])
        unused = _zero_slices(params[member.name], member.dim)  # coupled pruning zeroed them
        for position in torch.nonzero(dropped & ~unused).flatten().tolist():
            _absorb(decision, member, modules[owner], values[position], position)


def _absorb(
    decision: Decision, member: Member, module: nn.Module, values: Tensor, position: int
) -> None:
    root = int(decision.roots[member.ids[position]])
    low, high = float(values.min()), float(values.max())
    if high - low > _CONSTANT * (1.0 + max(abs(low), abs(high))):
        decision.dropped[root] = False
        decision.kept[root] = f"its value at {member.op!r} depends on the input"
        return
    constant = (low + high) / 2
    if constant != 0.0 and _pads_with_zeros(module):
        decision.dropped[root] = False
        decision.kept[root] = (
            f"a constant {constant:.3g} reaches {member.op!r}, which pads with zeros (exact "
            "inside, not at the borders): prune these channels with coupled=True, which also "
            "zeroes the BatchNorm's scale and shift"
        )
        return
    decision.constants.setdefault(member.name, {})[position] = constant


def _pads_with_zeros(module: nn.Module) -> bool:
    padding = getattr(module, "padding", 0)
    padded = (
        any(p > 0 for p in padding) if isinstance(padding, tuple) else padding not in (0, "valid")
    )
    return isinstance(module, nn.modules.conv._ConvNd) and padded and module.padding_mode == "zeros"


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _record_inputs(
    model: nn.Module, modules: Mapping[str, nn.Module], example: ExampleInputs
) -> dict[str, Tensor]:
    """Each module's first input when the model runs on ``example`` (eval mode, no grad)."""
    seen: dict[str, Tensor] = {}
    handles = []
    for name, module in modules.items():

        def record(mod: nn.Module, args: tuple[object, ...], _name: str = name) -> None:
            if args and isinstance(args[0], Tensor):
                seen[_name] = args[0].detach()

        handles.append(module.register_forward_pre_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            example.call(model)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return seen


def _channel_values(module: nn.Module, inputs: Tensor) -> Tensor:
    """``(channels, values)``: every value each input channel of ``module`` took."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return inputs.movedim(1, 0).reshape(inputs.shape[1], -1)
    return inputs.reshape(-1, inputs.shape[-1]).t()
