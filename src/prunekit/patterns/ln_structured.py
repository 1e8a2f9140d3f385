"""``"ln_structured"``: whole channels along one dim, ranked by their Ln norm.

The semantics of ``torch.nn.utils.prune.LnStructured``, so that a torch user gets the same
masks: the channels are the slices of the weight along ``dim`` (default -1, as torch), each
channel's score is the Ln norm (``n``) of the scores over every other dim, and the lowest
channels go. With the magnitude criterion (scores ``|w|``) the norms are exactly torch's
norms of ``w``, so wherever torch has no ties the masks are equal.

``amount`` is torch's argument: an int is a number of channels per op, a float the fraction
``round(amount * channels)`` (Python's round, as torch). When it is set it takes precedence
over the target that ``get_masks`` is given (and so over any schedule); when it is None the
target is used like every other pattern's.

Where we differ from torch, and why:

* ``n="fro"`` is the L2 norm of the flattened channel on every weight; torch only accepts it
  when the channel has at most two dims (Linear, Conv1d) and raises on Conv2d/Conv3d.
* ``pre_masks`` follow prunekit's rule: channels already removed stay removed and *count*
  toward ``amount``; torch's repeated ``ln_structured`` prunes ``amount`` *more* of the
  remaining channels each time.
* Under ``pruning_scope="global"`` a channel's score is its norm divided by
  ``channel_size ** (1 / n)`` (the power mean, the Ln analogue of the "mean" reduction every
  block pattern uses), so channels of layers with different fan-in compare fairly; raw norms
  grow with the channel size and would empty the narrow layers first. Local scope ranks one
  op's equally sized channels, where the division changes nothing, so it uses the raw norm.
* Ties are broken toward the lower channel index (torch's ``topk`` leaves them unspecified).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, StrictFloat, StrictInt, field_validator
from pydantic_core import PydanticCustomError
from torch import Tensor, nn

from prunekit.errors import DimOutOfRangeError, ImpossibleTargetError
from prunekit.masks.geometry import BlockLayout, Reduce
from prunekit.masks.layouts import AxisLayout
from prunekit.masks.limits import caps_of, check_target
from prunekit.masks.pattern import WEIGHT_MODULES, Pattern, PatternConfig, PatternOptions
from prunekit.plugins.hookspecs import Register, hookimpl

# The most dims a supported weight has (Conv3d / ConvTranspose3d: out, in, d, h, w).
_MAX_WEIGHT_DIMS = 5

Norm = float | Literal["fro"]


def _norm_error(value: Any) -> PydanticCustomError:
    return PydanticCustomError(
        "prunekit",
        "{message}",
        {
            "message": f"{value!r} is not a supported norm order: use a number > 0 (1, 2, 3, "
            "0.5, ...), inf, -inf, 'fro' (the same as 2) or the strings 'inf' / '-inf'"
        },
    )


class LnStructuredOptions(PatternOptions):
    """The options of ``"ln_structured"`` (torch's ``n``, ``dim`` and ``amount``)."""

    n: Norm = Field(
        2.0,
        description="The norm order that ranks channels, as torch.norm's p: a number > 0 "
        "(1, 2, ...), inf (largest |score|), -inf (smallest |score|) or 'fro' (= 2; the "
        "strings 'inf' and '-inf' are accepted for JSON). torch has no default; ours is 2.",
    )
    dim: Annotated[int, Field(strict=True)] = Field(
        -1,
        ge=-_MAX_WEIGHT_DIMS,
        le=_MAX_WEIGHT_DIMS - 1,
        description="The weight dim whose slices are the channels (negative counts from the "
        "end, as torch; default -1 as torch). Linear (out, in): 0 removes output neurons, "
        "-1 input features; Conv (out, in, *kernel): 0 removes filters.",
    )
    amount: (
        Annotated[StrictInt, Field(ge=0)]
        | Annotated[StrictFloat, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
        | None
    ) = Field(
        None,
        description="torch's amount: an int is a number of channels to remove per op (local "
        "scope only), a float in [0, 1] the fraction round(amount * channels). Takes "
        "precedence over the target given to get_masks; None: use that target.",
    )

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, value: Any) -> int | float | None:
        """One clear message instead of one per union member; bools are not counts (torch
        would take True as 1 channel)."""
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, float) and 0.0 <= value <= 1.0:
            return value
        raise PydanticCustomError(
            "prunekit",
            "{message}",
            {
                "message": f"{value!r} is not an amount: use an int >= 0 (channels to remove "
                "per op), a float in [0, 1] (the fraction round(amount * channels)) or None "
                "(use the target)"
            },
        )

    @field_validator("n", mode="before")
    @classmethod
    def _norm_order(cls, value: Any) -> Norm:
        """Accept torch's norm orders that rank channels (p > 0, inf, -inf, 'fro'); refuse
        p <= 0 (p=0 counts non-zeros, negative p are not norms) and matrix norms ('nuc')."""
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "fro":
                return "fro"
            if text in {"inf", "+inf", "-inf"}:
                return float(text)
            raise _norm_error(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _norm_error(value)
        order = float(value)
        if math.isnan(order) or (order <= 0 and order != -math.inf):
            raise _norm_error(value)
        return order


def norm_order(n: Norm) -> float:
    """The ``ord`` of :func:`torch.linalg.vector_norm` for option ``n`` ("fro" is 2)."""
    return 2.0 if n == "fro" else float(n)


class NormLayout(AxisLayout):
    """One block per channel along ``dim``, scored by the channel's Ln norm over every other
    dim (whatever the reduction asked): one vectorized ``vector_norm``, the function
    ``torch.norm`` calls, so the values equal torch's bit for bit. ``fair``: divide by
    ``channel_size ** (1 / n)`` so that channels of layers of different fan-in compare
    fairly (global scope)."""

    def __init__(self, shape: tuple[int, ...], dim: int, order: float, *, fair: bool) -> None:
        super().__init__(shape, span=tuple(d for d in range(len(shape)) if d != dim))
        self.order = order
        self.fair = fair and math.isfinite(order)

    def reduce(self, values: Tensor, how: Reduce) -> Tensor:
        norms: Tensor = torch.linalg.vector_norm(values, ord=self.order, dim=self.span)
        if self.fair:
            norms = norms / float(self.block_size) ** (1.0 / self.order)
        return norms.reshape(-1)

    def removed(self, pre_mask: Tensor) -> Tensor:
        """Channels a pre-mask removed whole (by the channels' max, not their norm)."""
        return super().reduce(pre_mask.to(torch.float32), "max") <= 0


class LnStructuredPattern(Pattern):
    """Whole channels along ``dim`` with the lowest Ln norm (torch's LnStructured)."""

    description = "Whole channels along dim with the lowest Ln norm (torch's LnStructured)"
    family = "channels by norm (torch)"
    Options = LnStructuredOptions
    # dim is explicit, so any weight works, transposed convs ((in, out, *kernel)) included.
    module_types = WEIGHT_MODULES

    @classmethod
    def check_config(cls, config: PatternConfig) -> dict[str, str]:
        """An int ``amount`` is per op (local scope only); a float one must be within the
        max cap, as a target would."""
        amount = config.options_for(LnStructuredOptions).amount
        if isinstance(amount, int) and config.pruning_scope != "local":
            return {
                "amount": f"an int amount ({amount} channels per op) only makes sense per "
                "op; use pruning_scope='local', or a float amount (a fraction, which "
                "global scope spreads over all ops)"
            }
        cap = config.max_sparsity_ratio_per_op
        if isinstance(amount, float) and amount > cap:
            return {
                "amount": f"{amount} is above max_sparsity_ratio_per_op ({cap}), so no op "
                "may reach it; lower amount or raise the cap"
            }
        return {}

    # -- layout: one block per channel along dim ------------------------------------------
    def channel_dim(self, name: str) -> int:
        """``dim`` made non-negative for op ``name``'s weight, or an error naming the op."""
        shape = self.shapes[name]
        dim: int = self.options.dim
        if not -len(shape) <= dim < len(shape):
            raise DimOutOfRangeError(
                f"pattern {self.config.pattern!r}: dim={dim} is out of range for op {name!r} "
                f"({self.module_kinds[name]}, weight shape {shape}): valid dims are "
                f"{-len(shape)}..{len(shape) - 1}"
            )
        return dim % len(shape)

    def layout(self, name: str, module: nn.Module) -> BlockLayout | None:
        shape = self.shapes[name]
        dim = self.channel_dim(name)
        layout = NormLayout(
            shape,
            dim,
            norm_order(self.options.n),
            fair=self.config.pruning_scope == "global",
        )
        amount = self.options.amount
        if isinstance(amount, int):
            self._check_amount(name, amount, layout)
        return layout

    def _check_amount(self, name: str, amount: int, layout: NormLayout) -> None:
        """An int amount above the channels or the max cap is refused (torch raises too),
        rather than silently pruning fewer channels than asked."""
        shape, channels = self.shapes[name], layout.num_blocks
        cap = self.config.max_sparsity_ratio_per_op
        allowed = caps_of(layout, self.config.min_sparsity_ratio_per_op, cap)[1]
        if amount > channels:
            raise ImpossibleTargetError(
                f"amount={amount} channels, but op {name!r} ({self.module_kinds[name]}, "
                f"weight shape {shape}) has only {channels} along dim {self.options.dim}"
            )
        if amount > allowed:
            raise ImpossibleTargetError(
                f"amount={amount} channels, but max_sparsity_ratio_per_op {cap} lets op "
                f"{name!r} ({self.module_kinds[name]}, weight shape {shape}) remove at "
                f"most {allowed} of its {channels} channels along dim {self.options.dim}; "
                "raise max_sparsity_ratio_per_op (1.0 allows all) or lower amount"
            )

    def channel_side(self, name: str) -> Literal["out", "in"] | None:
        """Channels along dim 0 are output channels; along dim 1, input channels (of a
        Linear, a conv, a transposed Linear seen (out, in); a ConvTranspose the other way)."""
        dim = self.channel_dim(name)
        transposed = self.module_kinds[name].startswith("ConvTranspose")
        if dim in (0, 1):
            return ("in" if dim == 0 else "out") if transposed else ("out" if dim == 0 else "in")
        return None

    # -- counts: amount before the target ----------------------------------------------------
    def check_target(self, target_sparsity: float) -> float:
        """The effective target: a float ``amount`` when set (it takes precedence; it was
        checked against the caps with the config), else the given target, checked as usual.
        With an int ``amount`` the returned value is unused (counts are per op)."""
        amount = self.options.amount
        if amount is None:
            return super().check_target(target_sparsity)
        check_target(target_sparsity, 1.0)
        return float(amount)

    def local_block_count(self, name: str, target: float) -> int:
        """Channels op ``name`` removes: an int ``amount`` exactly, else ``round(target *
        channels)`` (a float ``amount`` is the target); the caps apply after."""
        amount = self.options.amount
        if isinstance(amount, int):
            return amount
        return super().local_block_count(name, target)


@hookimpl
def register_patterns(register: Register) -> None:
    register("ln_structured", LnStructuredPattern)
