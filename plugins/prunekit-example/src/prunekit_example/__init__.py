"""prunekit-example: a third-party prunekit plugin with one pattern, ``"block_diagonal"``.

Nothing here needs importing by hand: prunekit finds the plugin through its ``prunekit``
entry point (``block_diagonal = "prunekit_example.plugin"``) the first time a registry is
used. The names below are exported for users who want the classes themselves (tests,
subclassing, inspecting a layout).
"""

from __future__ import annotations

from prunekit_example.plugin import BlockDiagonalOptions, BlockDiagonalPattern, DiagonalLayout

__version__ = "0.1.0"

__all__ = ["BlockDiagonalOptions", "BlockDiagonalPattern", "DiagonalLayout", "__version__"]
