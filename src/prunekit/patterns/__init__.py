"""The built-in patterns: options and a layout each, registered by the plugin hook.

Each module here is a built-in plugin (listed in :data:`prunekit.plugins.BUILTIN_PLUGINS`)
and registers its patterns through ``register_patterns``, exactly as a third-party plugin
does. The geometry they build on lives in :mod:`prunekit.masks`; its public names are
re-exported here for plugin authors.
"""

from prunekit.masks import (
    AxisLayout,
    BlockLayout,
    BlockOptions,
    GridLayout,
    GroupLayout,
    Pattern,
    PatternOptions,
    Reduce,
    ReduceOptions,
    from_2d,
    to_2d,
)

__all__ = [
    "AxisLayout",
    "BlockLayout",
    "BlockOptions",
    "GridLayout",
    "GroupLayout",
    "Pattern",
    "PatternOptions",
    "Reduce",
    "ReduceOptions",
    "from_2d",
    "to_2d",
]
