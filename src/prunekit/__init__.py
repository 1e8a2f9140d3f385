"""prunekit: neural-network pruning patterns as a plug-in ecosystem for PyTorch.

The public API (see docs/ and the README): ``PATTERNS``, ``register_pattern``,
``get_pattern``, ``list_patterns``, ``Pattern``, ``PruningConfig``, ``hookimpl``. Importing
prunekit discovers nothing: plugins load on first use of a registry.
"""

from prunekit.config import ConfigError, PruningConfig, load_config, load_configs
from prunekit.errors import (
    ImpossibleTargetError,
    IndivisibleShapeError,
    InvalidSpecError,
    NameTakenError,
    PrunekitError,
    ScoreError,
    UnknownCriterionError,
    UnknownPatternError,
    UnknownScheduleError,
    UnsupportedModuleError,
)
from prunekit.hookspecs import hookimpl
from prunekit.patterns.base import BlockOptions, Pattern, PatternOptions
from prunekit.plugins import PluginWarning, load_plugins
from prunekit.pruner import MaskFileError, Pruner, prune
from prunekit.registry import (
    CRITERIA,
    PATTERNS,
    SCHEDULES,
    get_pattern,
    list_patterns,
    register_pattern,
)
from prunekit.report import OpReport, PruningReport
from prunekit.selection_ops import OpSelectionError

__version__ = "0.1.0"

__all__ = [
    "CRITERIA",
    "PATTERNS",
    "SCHEDULES",
    "BlockOptions",
    "ConfigError",
    "ImpossibleTargetError",
    "IndivisibleShapeError",
    "InvalidSpecError",
    "MaskFileError",
    "NameTakenError",
    "OpReport",
    "OpSelectionError",
    "Pattern",
    "PatternOptions",
    "PluginWarning",
    "PrunekitError",
    "Pruner",
    "PruningConfig",
    "PruningReport",
    "ScoreError",
    "UnknownCriterionError",
    "UnknownPatternError",
    "UnknownScheduleError",
    "UnsupportedModuleError",
    "__version__",
    "get_pattern",
    "hookimpl",
    "list_patterns",
    "load_config",
    "load_configs",
    "load_plugins",
    "prune",
    "register_pattern",
]
