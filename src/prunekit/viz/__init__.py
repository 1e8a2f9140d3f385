"""Pictures: the masks a pattern makes (``prunekit show``, docs/patterns.md) and schedules
over steps (``prunekit plot-schedule``). matplotlib is imported only when one is drawn."""

from prunekit.viz.masks import (
    DEFAULT_SHAPES,
    MODULE_KINDS,
    MaskPicture,
    build_module,
    draw_mask,
    figure_of,
    mask_picture,
    option_values,
    parse_shape,
    save_mask_picture,
)
from prunekit.viz.schedule import default_steps, draw_schedule, save_schedule_plot, schedule_points

__all__ = [
    "DEFAULT_SHAPES",
    "MODULE_KINDS",
    "MaskPicture",
    "build_module",
    "default_steps",
    "draw_mask",
    "draw_schedule",
    "figure_of",
    "mask_picture",
    "option_values",
    "parse_shape",
    "save_mask_picture",
    "save_schedule_plot",
    "schedule_points",
]
