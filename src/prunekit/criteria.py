"""Criteria: functions that turn what a weight knows into scores (higher = keep).

A criterion is a pure function ``criterion(weight, **context) -> scores`` with ``scores``
shaped like ``weight``. ``context`` carries what some criteria need (``grad``, ``state``,
``seed``); a criterion ignores what it does not use. Registered through the
``register_criteria`` hook like any plugin's.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from prunekit.hookspecs import Register, hookimpl


def magnitude(weight: Tensor, **context: Any) -> Tensor:
    """|w|: the weight's magnitude (torch.nn.utils.prune's L1 unstructured, INC's magnitude)."""
    return weight.detach().abs()


def l2(weight: Tensor, **context: Any) -> Tensor:
    """w^2: the squared weight; the same order as |w| per element, summed blocks differ."""
    detached = weight.detach()
    return detached * detached


@hookimpl
def register_criteria(register: Register) -> None:
    register("magnitude", magnitude)
    register("l2", l2)
