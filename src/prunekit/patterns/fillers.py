"""N2D2's fillers as patterns: ``random`` and ``iter_nonstruct`` (unstructured).

``random`` fills the mask randomly with the exact count, from a generator seeded by
``config.seed`` and the op's name, so the same seed gives the same mask on every run (and
different ops get different draws). Scores are validated but not used.

``iter_nonstruct`` is N2D2's IterNonStruct: remove every weight whose score is below
``delta``, then below ``2 * delta``, and so on until the target is reached. N2D2 removes the
whole last step and overshoots; we remove exactly the target, lowest first, within the last
step. The result is therefore the lowest-``k`` mask: the same weights as ``"1x1"`` at the
same scope. ``last_steps`` records, per op, how many delta steps N2D2 would have taken.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping

import torch
from pydantic import Field
from torch import Tensor, nn

from prunekit.masks.geometry import BlockLayout, Reduce
from prunekit.masks.layouts import AxisLayout
from prunekit.masks.pattern import WEIGHT_MODULES, Masks, Pattern, PatternOptions
from prunekit.plugins.hookspecs import Register, hookimpl


class _Filler(Pattern):
    """An N2D2 filler: every weight is its own block, on any weight-carrying module."""

    family = "filler (N2D2)"
    Options = PatternOptions
    module_types = WEIGHT_MODULES

    def layout(self, name: str, module: nn.Module) -> BlockLayout | None:
        return AxisLayout(self.shapes[name], ())


class DrawnLayout(AxisLayout):
    """One block per weight whose scores are seeded random draws, whatever the scores given
    (they are validated but not read): the same seed and op name, the same draws."""

    def __init__(self, shape: tuple[int, ...], seed: int) -> None:
        super().__init__(shape, ())
        self.seed = seed

    def reduce(self, values: Tensor, how: Reduce) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        draws = torch.rand(math.prod(self.shape), generator=generator)
        return draws.to(device=values.device, dtype=values.dtype)

    def removed(self, pre_mask: Tensor) -> Tensor:
        """The weights a pre-mask removed (the draws are scores, not what was removed)."""
        return ~pre_mask.reshape(-1)


class RandomFiller(_Filler):
    """N2D2's Random filler: a random mask with the exact count, seeded by config.seed."""

    description = "N2D2's Random filler: random weights, exact count, reproducible per seed"
    uses_scores = False

    def layout(self, name: str, module: nn.Module) -> BlockLayout | None:
        """Draws from ``config.seed`` mixed with a stable hash of the op name."""
        seed = (self.config.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)
        return DrawnLayout(self.shapes[name], seed)


class IterNonStructOptions(PatternOptions):
    """``iter_nonstruct``'s options."""

    delta: float = Field(
        0.001,
        gt=0.0,
        allow_inf_nan=False,
        description="N2D2's step: weights scoring below delta go first, then below 2*delta, ...; "
        "the mask removes exactly the target, lowest first, within the last step.",
    )


class IterNonStructFiller(_Filler):
    """N2D2's IterNonStruct filler with an exact target (lowest scores first)."""

    description = "N2D2's IterNonStruct filler: below delta, 2*delta, ... until exactly the target"
    Options = IterNonStructOptions

    def get_masks(
        self,
        scores: Mapping[str, Tensor],
        target_sparsity: float,
        pre_masks: Mapping[str, Tensor] | None = None,
    ) -> Masks:
        masks = super().get_masks(scores, target_sparsity, pre_masks)
        delta = self.options.delta
        # N2D2's step count: the smallest k with every removed weight below k * delta.
        self.last_steps: dict[str, int] = {}
        for name, mask in masks.items():
            removed = scores[name].detach()[~mask]
            top = float(removed.max()) if removed.numel() else 0.0
            self.last_steps[name] = max(0, math.floor(top / delta) + 1) if removed.numel() else 0
        return masks


@hookimpl
def register_patterns(register: Register) -> None:
    register("random", RandomFiller)
    register("iter_nonstruct", IterNonStructFiller)
