"""Mask geometry and the selection engine: how weights split into blocks, and which to remove.

This layer knows tensors and modules only (no configs, no plugins). Plugin authors use:
:class:`Pattern` and its options, the layouts (:class:`GridLayout`, :class:`AxisLayout`,
:class:`GroupLayout`, or their own :class:`BlockLayout`) and INC's 2-D view
(:func:`to_2d`, :func:`from_2d`). The rest (problem builder, engine, selection) runs behind
``Pattern.get_masks``.
"""

from prunekit.masks.geometry import BlockLayout, Reduce
from prunekit.masks.groups import GroupLayout
from prunekit.masks.layouts import AxisLayout, GridLayout
from prunekit.masks.pattern import (
    WEIGHT_MODULES,
    BlockOptions,
    Masks,
    Pattern,
    PatternConfig,
    PatternOptions,
    ReduceOptions,
)
from prunekit.masks.views import from_2d, to_2d

__all__ = [
    "WEIGHT_MODULES",
    "AxisLayout",
    "BlockLayout",
    "BlockOptions",
    "GridLayout",
    "GroupLayout",
    "Masks",
    "Pattern",
    "PatternConfig",
    "PatternOptions",
    "Reduce",
    "ReduceOptions",
    "from_2d",
    "to_2d",
]
