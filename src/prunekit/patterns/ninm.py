"""The N:M family (INC's ``"N:M"``): ``"2:4"``, ``"1:4"``, ``"4:8"``, any ``N < M``.

In every group of M consecutive weights along the input side of INC's 2-D view (the same view
as NxM: Linear ``(out, in)``, Conv ``(out, kernel * in)`` with in fastest), exactly N are
removed, the N lowest-scoring (ties to the lower index). **N counts removed weights, as in
INC**; NVIDIA and the N:M literature count *kept* weights, and the two readings agree only
when N = M/2 (2:4, 4:8).

At ``target_sparsity == N/M`` every group is N:M, the layout sparse tensor cores need. Below
N/M the lowest-scoring groups (a group scores by the mean of its weights) become N:M and the
others stay dense, so the op is not hardware-valid; above N/M is an error. When M does not
divide the view's width, the edge group of each row stays dense (``indivisible="partial"``),
or the op is skipped or refused. The geometry is :class:`~prunekit.masks.groups.GroupLayout`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field
from torch import Tensor, nn

from prunekit.errors import ImpossibleTargetError, InvalidSpecError
from prunekit.masks.geometry import BlockLayout
from prunekit.masks.groups import GroupLayout
from prunekit.masks.pattern import BlockOptions, Pattern, PatternConfig
from prunekit.plugins.hookspecs import Register, hookimpl

_SPEC = r"(?P<n>[0-9]+):(?P<m>[0-9]+)"


class NInMOptions(BlockOptions):
    """N:M's options: a weight whose view width M does not divide is skipped by default, as
    INC does (named in the report and a warning): a dense edge would make the op unusable
    by sparse hardware and keep the target from being met on the others."""

    indivisible: Literal["partial", "skip", "raise"] = Field(
        "skip",
        description="A weight whose 2-D view width is not a multiple of M: 'skip' the op "
        "(default, as INC; named in the report and a warning), 'partial' (edge weights stay "
        "dense; not hardware-valid) or 'raise'.",
    )


class NInMPattern(Pattern):
    """N of every M consecutive input-side weights removed (N counts removed, as in INC)."""

    description = "N of every M consecutive input-side weights removed (N counts removed, as INC)"
    family = "N:M groups (INC)"
    spec = _SPEC
    spec_examples = ("2:4", "1:4", "4:8", "1:2", "2:8")
    Options = NInMOptions

    @classmethod
    def parse_spec(cls, spec: str) -> Mapping[str, Any]:
        match = re.fullmatch(_SPEC, spec)
        if match is None:
            raise InvalidSpecError(
                f"pattern {spec!r} is not an N:M spec: write whole numbers with 1 <= N < M, "
                "as in '2:4' (N counts the removed weights of every M)"
            )
        n, m = int(match["n"]), int(match["m"])
        if not 1 <= n < m:
            raise InvalidSpecError(
                f"pattern {spec!r}: N:M needs 1 <= N < M (N removed of every M), got N={n}, M={m}"
            )
        return {"n": n, "m": m}

    @classmethod
    def default_target(cls, spec: str) -> float | None:
        """N/M: a config that says only ``"2:4"`` asks for the hardware layout."""
        params = cls.parse_spec(spec)
        return float(params["n"]) / float(params["m"])

    @classmethod
    def check_config(cls, config: PatternConfig) -> dict[str, str]:
        params = cls.parse_spec(config.pattern)
        if config.target_sparsity > params["n"] / params["m"] + 1e-12:
            return {
                "target_sparsity": (
                    f"is above N/M = {params['n']}/{params['m']}: pattern "
                    f"{config.pattern!r} removes at most N of every M weights"
                )
            }
        return {}

    @property
    def ratio(self) -> float:
        """N/M: the highest sparsity, reached when every group is N:M."""
        return float(self.params["n"]) / float(self.params["m"])

    def layout(self, name: str, module: nn.Module) -> BlockLayout | None:
        return GroupLayout(self.shapes[name], self.params["n"], self.params["m"])

    def check_target(self, target_sparsity: float) -> float:
        target = super().check_target(target_sparsity)
        if target > self.ratio + 1e-12:
            raise ImpossibleTargetError(
                f"target_sparsity {target} is above N/M = {self.params['n']}/{self.params['m']} "
                f"= {self.ratio:g}: pattern {self.config.pattern!r} removes at most N of every M "
                "weights"
            )
        return target

    def independent_column_width(self, name: str, target: float) -> int | None:
        """M when every group becomes N:M (the op's target, after its cap, is N/M): each
        group then keeps exactly M - N whatever the others score."""
        if name not in self.layouts:
            return None
        reached = min(target, self.config.max_sparsity_ratio_per_op)
        return self.params["m"] if abs(reached - self.ratio) <= 1e-12 else None

    def is_hardware_valid(self, name: str, mask: Tensor) -> bool:
        """Whether op ``name``'s mask is N:M in every group (a skipped op is not)."""
        return bool(super().is_hardware_valid(name, mask))


@hookimpl
def register_patterns(register: Register) -> None:
    register("N:M", NInMPattern)
