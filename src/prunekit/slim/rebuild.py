"""Making modules smaller: which positions each parameter keeps, and the modules rebuilt.

The plan of a slimming is plain data (:class:`ModulePlan` per module: which positions of
which dim each parameter keeps, whether a bias is added to absorb constants, attributes to
set), so that the same surgery rebuilds a freshly built dense model to the slimmed shapes
(:func:`prunekit.slim.plan.apply_slim_plan`). :func:`rebuilt` makes the smaller module for a
plan: Linear, ConvNd, BatchNorm, Hugging Face's Conv1D, and any other module whose
parameters are sliced in place.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.masks.views import is_transposed_linear


@dataclass
class ModulePlan:
    """What one module becomes: per parameter (or buffer), the positions each dim keeps."""

    kind: str  # the module's class name, to check a plan against the model it is applied to
    keep: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    add_bias: bool = False
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "class": self.kind,
            "keep": {p: {str(d): idx for d, idx in dims.items()} for p, dims in self.keep.items()},
            "add_bias": self.add_bias,
            "attributes": self.attributes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModulePlan:
        keep = {
            p: {int(d): list(idx) for d, idx in dims.items()} for p, dims in data["keep"].items()
        }
        return cls(
            data["class"], keep, bool(data.get("add_bias", False)), dict(data.get("attributes", {}))
        )


def sliced(tensor: Tensor, keep: dict[int, list[int]]) -> Tensor:
    """``tensor`` with only the kept positions of each dim."""
    for dim, positions in sorted(keep.items()):
        tensor = tensor.index_select(
            dim, torch.tensor(positions, dtype=torch.long, device=tensor.device)
        )
    return tensor.contiguous()


def rebuilt(module: nn.Module, plan: ModulePlan) -> nn.Module:
    """A new module of ``module``'s kind with the plan's shapes and values (``module`` itself
    is not changed)."""
    if isinstance(module, nn.Linear):
        return _linear(module, plan)
    if isinstance(module, nn.modules.conv._ConvNd):
        return _conv(module, plan)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _batch_norm(module, plan)
    return _in_place(module, plan)


def _values(module: nn.Module, plan: ModulePlan) -> dict[str, Tensor]:
    """Every direct parameter and buffer of ``module``, sliced by the plan."""
    found: dict[str, Tensor] = {}
    for name, tensor in list(module.named_parameters(recurse=False)) + list(
        module.named_buffers(recurse=False)
    ):
        found[name] = sliced(tensor.detach(), plan.keep.get(name, {}))
    return found


def _linear(module: nn.Linear, plan: ModulePlan) -> nn.Module:
    values = _values(module, plan)
    weight = values["weight"]
    has_bias = module.bias is not None or plan.add_bias
    new = nn.Linear(
        weight.shape[1], weight.shape[0], bias=has_bias, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if new.bias is not None:
            new.bias.copy_(values["bias"] if "bias" in values else torch.zeros_like(new.bias))
    _copy_flags(module, new)
    return new


def _conv(module: nn.modules.conv._ConvNd, plan: ModulePlan) -> nn.Module:
    values = _values(module, plan)
    weight = values["weight"]
    transposed = module.transposed
    depthwise = module.groups > 1 and module.groups == module.in_channels
    out_channels = weight.shape[1] * module.groups if transposed else weight.shape[0]
    in_channels = weight.shape[0] if transposed else weight.shape[1] * module.groups
    new = copy.copy(module)  # same class, stride, padding, dilation...
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = dict(module._modules)
    if depthwise:
        in_channels = out_channels // (module.out_channels // module.in_channels)
        new.groups = in_channels
    new.in_channels, new.out_channels = in_channels, out_channels
    new.weight = nn.Parameter(weight, requires_grad=module.weight.requires_grad)
    bias = values.get("bias")
    if bias is None and plan.add_bias:
        bias = torch.zeros(out_channels, dtype=weight.dtype, device=weight.device)
    new.bias = None if bias is None else nn.Parameter(bias)
    return new


def _batch_norm(module: nn.modules.batchnorm._BatchNorm, plan: ModulePlan) -> nn.Module:
    values = _values(module, plan)
    features = next(v.shape[0] for k, v in values.items() if k in {"weight", "running_mean"})
    new = copy.copy(module)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new.num_features = features
    for name, value in values.items():
        if name in module._parameters:
            new._parameters[name] = nn.Parameter(value)
        else:
            new._buffers[name] = value
    return new


def _in_place(module: nn.Module, plan: ModulePlan) -> nn.Module:
    """Any other module (Hugging Face's Conv1D, a norm's weight, a class token): a shallow
    copy whose sliced parameters are new, its attributes as the plan says."""
    values = _values(module, plan)
    new = copy.copy(module)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = dict(module._modules)
    for name, value in values.items():
        old = module._parameters.get(name)
        if old is not None and name in plan.keep:
            new._parameters[name] = nn.Parameter(value, requires_grad=old.requires_grad)
        elif name in module._buffers and name in plan.keep:
            new._buffers[name] = value
    if plan.add_bias and is_transposed_linear(new) and new._parameters.get("bias") is None:
        weight = new._parameters["weight"]
        assert weight is not None
        new._parameters["bias"] = nn.Parameter(torch.zeros(weight.shape[1], dtype=weight.dtype))
    if is_transposed_linear(module):
        weight = new._parameters["weight"]
        assert weight is not None
        setattr(new, "nf", int(weight.shape[1]))  # noqa: B010 (Conv1D's output width)
    for name, value in plan.attributes.items():
        setattr(new, name, value)
    return new


def _copy_flags(old: nn.Module, new: nn.Module) -> None:
    new.train(old.training)
    for name, param in new.named_parameters(recurse=False):
        source = getattr(old, name, None)
        if isinstance(source, nn.Parameter):
            param.requires_grad_(source.requires_grad)
