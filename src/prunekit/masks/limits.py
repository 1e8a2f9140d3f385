"""The counting rules every selection path shares, each written once.

* how many blocks an op must / may remove under the ratio caps (:func:`caps_of`), and each
  output row band of an op under ``per_output`` scope (:func:`block_caps_per_band`);
* how many it removes on its own under local scope (:func:`local_count`);
* what limits each op (:func:`op_limit`) and the error when the caps and the geometry
  cannot reach a target: :func:`unreachable` names the ops that limit it and the remedy;
  :func:`unreachable_target` is the engines' own last check, in elements.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.errors import ImpossibleTargetError
from prunekit.masks.geometry import BlockLayout, blocks_at, limit_note, removable_elements

_EPS = 1e-9


def block_caps(blocks: int, at_max: float, at_min: float, pre_removed: int) -> tuple[int, int]:
    """``(lo, hi)``: the blocks an op must / may remove under its ratio caps.

    ``at_max`` / ``at_min``: how many blocks the max / min ratio stand for (see
    :func:`prunekit.masks.geometry.blocks_at`). The max cap rounds down and the min cap up (a
    cap is a promise), within the op's ``blocks``; blocks a pre-mask already removed stay
    removed, so both rise to cover them.
    """
    hi = min(math.floor(at_max + _EPS), blocks)
    lo = min(math.ceil(at_min - _EPS), hi)
    return max(lo, pre_removed), max(hi, pre_removed)


def block_caps_per_band(
    blocks: Tensor, at_max: Tensor, at_min: Tensor, pre_removed: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`block_caps` for many bands of one op at once (``per_output`` scope: every
    output row band alone), each argument a 1-D tensor with one entry per band: the same
    rule, rounded the same way."""
    hi = torch.minimum(torch.floor(at_max + _EPS).to(torch.int64), blocks)
    lo = torch.minimum(torch.ceil(at_min - _EPS).to(torch.int64), hi)
    return torch.maximum(lo, pre_removed), torch.maximum(hi, pre_removed)


def caps_of(
    layout: BlockLayout, min_ratio: float, max_ratio: float, pre_removed: int = 0
) -> tuple[int, int]:
    """``(lo, hi)`` of an op with ``layout`` under the ratio caps (see :func:`block_caps`)."""
    return block_caps(
        layout.num_blocks, blocks_at(layout, max_ratio), blocks_at(layout, min_ratio), pre_removed
    )


def local_count(wanted: int, lo: int, hi: int) -> int:
    """Blocks one op removes on its own: ``wanted`` (``round(target * blocks)``, Python's
    round as torch.nn.utils.prune, or what the pattern asks) held within its caps."""
    return min(max(wanted, lo), hi)


def unreachable_target(reachable: int, target: int, total: int) -> ImpossibleTargetError:
    """The error for a global ``target`` (elements) above what the caps allow in all."""
    share = max(total, 1)
    return ImpossibleTargetError(
        f"the pattern and the per-op caps allow removing at most {reachable} of {total} "
        f"elements ({reachable / share:.2%}) but the target asks for {target} "
        f"({target / share:.2%}): short by {target - reachable} elements; raise "
        "max_sparsity_ratio_per_op or lower the target"
    )


def check_target(target_sparsity: object, max_ratio: float) -> float:
    """The target as a float, or an error naming it and the valid range (``[0, 1)``, and no
    higher than ``max_ratio``, the most any op may remove)."""
    if isinstance(target_sparsity, bool) or not isinstance(target_sparsity, (int, float)):
        raise ValueError(f"target_sparsity: expected a number in [0, 1), got {target_sparsity!r}")
    target = float(target_sparsity)
    if not (0.0 <= target < 1.0) or math.isnan(target):
        raise ValueError(f"target_sparsity: {target_sparsity!r} is not in [0, 1)")
    if target > max_ratio:
        raise ImpossibleTargetError(
            f"target_sparsity {target} is above max_sparsity_ratio_per_op {max_ratio}: no op "
            f"may remove more than {max_ratio:.2%}, so the target is short by "
            f"{target - max_ratio:.2%}"
        )
    return target


@dataclass(frozen=True)
class OpLimit:
    """The most one op may lose: ``most`` of its ``elements``, limited by the max cap
    (``by_cap``) or by its blocks' geometry (``note`` says how)."""

    name: str
    elements: int
    most: int
    by_cap: bool
    note: str

    @property
    def ratio(self) -> float:
        return self.most / self.elements if self.elements else 0.0


def op_limit(
    name: str, layout: BlockLayout, elements: int, min_ratio: float, max_ratio: float
) -> OpLimit:
    """What the caps and ``layout`` let op ``name`` (of ``elements`` weights) remove."""
    most = removable_elements(layout, caps_of(layout, min_ratio, max_ratio)[1])
    by_cap = math.floor(max_ratio * elements + _EPS) - most < layout.block_size
    note = f"max_sparsity_ratio_per_op {max_ratio:g}" if by_cap else limit_note(layout)
    return OpLimit(name, elements, most, by_cap, note)


def unreachable(
    target: float,
    ops: Sequence[OpLimit],
    skipped: Mapping[str, str],
    max_ratio: float,
    what: str = "target_sparsity",
) -> ImpossibleTargetError | None:
    """The error for a global ``target`` (a fraction of the pruned ops' weights) above what
    ``ops`` allow together, naming the ops that limit it and the remedy; None when it can
    be reached. ``skipped``: ops left unpruned (op -> why), which do not count."""
    total = sum(op.elements for op in ops)
    asked = round(target * total)
    most = sum(op.most for op in ops)
    if not ops and target > 0:
        return ImpossibleTargetError(
            f"{what} {target:g} cannot be reached: every op is left unpruned ("
            + "; ".join(f"{name!r}: {why}" for name, why in skipped.items())
            + "); select ops the pattern can prune, or change the pattern's options"
        )
    if asked <= most:
        return None
    limiting = sorted(ops, key=lambda op: op.ratio)
    listed = ", ".join(f"{op.name!r} {op.ratio:.2%} ({op.note})" for op in limiting[:6])
    more = f" and {len(limiting) - 6} more" if len(limiting) > 6 else ""
    capped = [op.name for op in ops if op.by_cap]
    remedy = f"lower {what} to at most {math.floor(most / max(total, 1) * 1e4) / 1e4:g}"
    if capped and max_ratio < 1.0:
        remedy += f", or raise max_sparsity_ratio_per_op (now {max_ratio:g}), which limits " + (
            ", ".join(map(repr, capped[:4])) + (" and others" if len(capped) > 4 else "")
        )
    left_out = (
        f"; left unpruned and not counted: {', '.join(map(repr, skipped))}" if skipped else ""
    )
    return ImpossibleTargetError(
        f"{what} {target:g} cannot be reached: it asks for {asked} of the {total} weights of "
        f"the pruned ops, and they allow at most {most} ({most / max(total, 1):.4%}), short by "
        f"{asked - most}. What limits them: {listed}{more}{left_out}. Remedy: {remedy}"
    )
