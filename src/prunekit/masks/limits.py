"""The counting rules every selection path shares, each written once.

* how many blocks an op must / may remove under the ratio caps (:func:`caps_of`);
* how many it removes on its own under local scope (:func:`local_count`);
* the error when the caps and the geometry cannot reach a target
  (:func:`unreachable_target`), raised by the global paths and by :func:`check_target`.
"""

from __future__ import annotations

import math

from prunekit.errors import ImpossibleTargetError
from prunekit.masks.geometry import BlockLayout, blocks_at

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
