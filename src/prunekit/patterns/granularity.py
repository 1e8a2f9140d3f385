"""fasterai's granularities: blocks that span named dims of a weight.

A Conv2d weight is ``(out, in, kh, kw)``; a granularity names the dims one block spans and
the block's score is the mean (``criterion_reduce_type``) over them. "shared" means the same
pattern for every filter: the block also spans ``out``. Linear ``(out, in)`` has ``weight``,
``column`` (spans out: removes an input neuron) and ``row`` (spans in: removes an output
neuron). Conv1d is Conv2d with ``kh = 1``; Conv3d adds a depth dim ``kd`` that the whole-kernel
names (``kernel``, ``shared_kernel``, ``filter``) span, plus ``depth`` and ``shared_depth``;
ConvTranspose weights are ``(in, out, ...)``, so each name finds ``out`` and ``in`` where they
are (``filter`` there spans every dim but ``out``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

from torch import nn

from prunekit.errors import UnsupportedModuleError
from prunekit.masks.geometry import BlockLayout
from prunekit.masks.layouts import AxisLayout
from prunekit.masks.pattern import WEIGHT_MODULES, Pattern, PatternConfig, ReduceOptions
from prunekit.masks.views import is_transposed_linear
from prunekit.plugins.hookspecs import Register, hookimpl

# Where each named dim sits in a module's weight; a dim a kind lacks (kh of a Conv1d) has
# size 1 in spirit, so spanning it changes nothing.
_CONV_DIMS: dict[int, dict[str, int]] = {
    1: {"out": 0, "in": 1, "kw": 2},
    2: {"out": 0, "in": 1, "kh": 2, "kw": 3},
    3: {"out": 0, "in": 1, "kd": 2, "kh": 3, "kw": 4},
}


def _dims_of(module: nn.Module) -> tuple[str, dict[str, int]] | None:
    """(kind, named dims) of a module's weight: "linear" or "conv", or None if neither."""
    if isinstance(module, nn.Linear) or is_transposed_linear(module):
        return "linear", {"out": 0, "in": 1}  # a transposed Linear is seen (out, in) too
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv", dict(_CONV_DIMS[module.weight.dim() - 2])
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        dims = dict(_CONV_DIMS[module.weight.dim() - 2])
        dims["out"], dims["in"] = 1, 0  # ConvTranspose weights are (in, out/groups, *kernel)
        return "conv", dims
    return None


# name -> (dims spanned on a conv, dims spanned on a linear or None, one-line description)
GRANULARITIES: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None, str]] = {
    "weight": ((), (), "single weights (unstructured)"),
    "shared_weight": (("out",), None, "single weights, one pattern shared by every filter"),
    "channel": (("in",), None, "vectors along the input-channel axis"),
    "column": (("kh",), ("out",), "conv: vectors along the height axis; linear: input neurons"),
    "row": (("kw",), ("in",), "conv: vectors along the width axis; linear: output neurons"),
    "shared_channel": (("out", "in"), None, "vectors along the channel axis, shared by filters"),
    "shared_column": (("out", "kh"), None, "vectors along the height axis, shared by filters"),
    "shared_row": (("out", "kw"), None, "vectors along the width axis, shared by filters"),
    "vertical_slice": (("in", "kh"), None, "slices over input channels and height"),
    "horizontal_slice": (("in", "kw"), None, "slices over input channels and width"),
    "kernel": (("kd", "kh", "kw"), None, "whole kernels of one filter and input channel"),
    "shared_vertical_slice": (("out", "in", "kh"), None, "vertical slices shared by filters"),
    "shared_horizontal_slice": (("out", "in", "kw"), None, "horizontal slices shared by filters"),
    "shared_kernel": (("out", "kd", "kh", "kw"), None, "whole input channels (of every filter)"),
    "filter": (("in", "kd", "kh", "kw"), None, "whole filters (output channels)"),
    "depth": (("kd",), None, "Conv3d: vectors along the depth axis"),
    "shared_depth": (("out", "kd"), None, "Conv3d: vectors along the depth axis, shared"),
}
_CONV3D_ONLY = {"depth", "shared_depth"}


def applicable_names(module: nn.Module) -> list[str]:
    """The granularity names that apply to ``module``'s type."""
    found = _dims_of(module)
    if found is None:
        return []
    kind, dims = found
    names = []
    for name, (_, linear_span, _) in GRANULARITIES.items():
        if kind == "linear" and linear_span is None:
            continue
        if name in _CONV3D_ONLY and "kd" not in dims:
            continue
        names.append(name)
    return names


def span_of(name: str, module: nn.Module) -> tuple[int, ...]:
    """The dims of ``module.weight`` that one ``name`` block spans."""
    found = _dims_of(module)
    assert found is not None
    kind, dims = found
    conv_span, linear_span, _ = GRANULARITIES[name]
    named = linear_span if kind == "linear" else conv_span
    assert named is not None
    return tuple(dims[d] for d in named if d in dims)


class GranularityPattern(Pattern):
    """Blocks spanning the dims a fasterai granularity names; one subclass per name."""

    granularity: ClassVar[str] = ""

    def __init__(self, config: PatternConfig, modules: Mapping[str, nn.Module]) -> None:
        self._kinds: dict[str, tuple[str, dict[str, int]] | None] = {}
        super().__init__(config, modules)

    family = "granularity (fasterai)"
    Options = ReduceOptions
    module_types = WEIGHT_MODULES

    def _check_module(self, name: str, module: nn.Module) -> None:
        super()._check_module(name, module)
        names = applicable_names(module)
        if self.granularity not in names:
            raise UnsupportedModuleError(
                f"granularity {self.granularity!r} does not apply to op {name!r} "
                f"({type(module).__name__}); names that do: {', '.join(names)}"
            )

    def layout(self, name: str, module: nn.Module) -> BlockLayout | None:
        self._kinds[name] = _dims_of(module)
        return AxisLayout(self.shapes[name], span_of(self.granularity, module))

    def channel_side(self, name: str) -> Literal["out", "in"] | None:
        """``filter`` and a Linear's ``row`` remove whole output channels; ``shared_kernel``
        and a Linear's ``column`` whole input channels."""
        found = self._kinds.get(name)
        if found is None:
            return None
        kind, dims = found
        spanned = set(GRANULARITIES[self.granularity][1 if kind == "linear" else 0] or ()) & set(
            dims
        )
        every = {d for d in dims if d != "out"}
        if spanned == every or (kind == "linear" and spanned == {"in"}):
            return "out"
        if spanned == {d for d in dims if d != "in"} or (kind == "linear" and spanned == {"out"}):
            return "in"
        return None


def _make(name: str, description: str) -> type[GranularityPattern]:
    title = "".join(part.capitalize() for part in name.split("_"))
    return type(
        f"{title}Granularity",
        (GranularityPattern,),
        {
            "granularity": name,
            "description": description,
            "__doc__": f"fasterai's {name!r} granularity: {description}.",
            "__module__": __name__,
        },
    )


PATTERN_CLASSES: Mapping[str, type[GranularityPattern]] = {
    name: _make(name, description) for name, (_, _, description) in GRANULARITIES.items()
}


@hookimpl
def register_patterns(register: Register) -> None:
    for name, cls in PATTERN_CLASSES.items():
        register(name, cls)
