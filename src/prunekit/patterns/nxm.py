"""The NxM family (INC's ``"NxM"``): ``"4x1"``, ``"1x1"``, ``"2x2"``, ``"channelx1"``, ...

N counts output channels (dim 0, "vertical"), M input positions, on INC's 2-D view of the
weight (see :mod:`prunekit.masks.views`). ``"1x1"`` is unstructured; ``"channel"`` spans the
whole dim, so ``"channelx1"`` removes whole columns of the view and ``"1xchannel"`` whole
rows (a whole output neuron or conv filter).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from torch import nn

from prunekit.errors import InvalidSpecError
from prunekit.masks.geometry import BlockLayout
from prunekit.masks.layouts import GridLayout
from prunekit.masks.pattern import Pattern
from prunekit.plugins.hookspecs import Register, hookimpl

_SPEC = r"(?P<n>[0-9]+|channel)x(?P<m>[0-9]+|channel)"


class NxMPattern(Pattern):
    """N x M tiles on the (out, kernel*in) view; 'channel' spans a whole dim."""

    description = "N x M tiles on INC's (out, kernel*in) view; 'channel' spans a whole dim"
    family = "blocks (INC)"
    spec = _SPEC
    spec_examples = ("1x1", "2x1", "4x1", "1x4", "2x2", "4x4", "channelx1", "1xchannel")

    @classmethod
    def parse_spec(cls, spec: str) -> Mapping[str, Any]:
        match = re.fullmatch(_SPEC, spec)
        if match is None:
            raise InvalidSpecError(
                f"pattern {spec!r} is not an NxM spec: write N and M as whole numbers >= 1 or "
                "'channel', as in '4x1', '1x1', 'channelx1', '1xchannel'"
            )
        params: dict[str, Any] = {}
        for key in ("n", "m"):
            text = match.group(key)
            if text != "channel" and int(text) < 1:
                raise InvalidSpecError(
                    f"pattern {spec!r}: block size {key.upper()}={text} must be >= 1 (or 'channel')"
                )
            params[key] = text if text == "channel" else int(text)
        return params

    def layout(self, name: str, module: nn.Module) -> BlockLayout | None:
        shape = self.shapes[name]
        rows, cols = shape[0], math.prod(shape[1:])
        n = rows if self.params["n"] == "channel" else self.params["n"]
        m = cols if self.params["m"] == "channel" else self.params["m"]
        return GridLayout(shape, n, m)

    def channel_side(self, name: str) -> Literal["out", "in"] | None:
        """``1xchannel`` removes whole output channels (rows of the view: neurons, filters);
        ``channelx1`` whole input features of a Linear (a conv's view columns are single
        kernel positions, not whole input channels)."""
        n, m = self.params["n"], self.params["m"]
        if m == "channel" and n == 1:
            return "out"
        if n == "channel" and m == 1 and len(self.shapes[name]) == 2:
            return "in"
        return None


@hookimpl
def register_patterns(register: Register) -> None:
    register("NxM", NxMPattern)
