"""Pattern families: one module each, every one registered through the plugin hook."""

from prunekit.patterns.base import BlockOptions, Pattern, PatternOptions
from prunekit.patterns.layout import BlockLayout, GridLayout, from_2d, to_2d

__all__ = [
    "BlockLayout",
    "BlockOptions",
    "GridLayout",
    "Pattern",
    "PatternOptions",
    "from_2d",
    "to_2d",
]
