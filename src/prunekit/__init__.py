"""prunekit: neural-network pruning patterns as a plug-in ecosystem for PyTorch.

The public API (see docs/ and the README): ``PATTERNS``, ``register_pattern``,
``get_pattern``, ``list_patterns``, ``Pattern``, ``PruningConfig``, ``hookimpl``, ``Pruner``
and ``prune``. Importing prunekit discovers nothing: plugins load on first use of a
registry. The layers, bottom up: :mod:`prunekit.errors` and :mod:`prunekit.naming`,
:mod:`prunekit.masks` (geometry and the selection engine), :mod:`prunekit.plugins`,
:mod:`prunekit.config`, :mod:`prunekit.patterns` (the built-ins), :mod:`prunekit.training`;
docs/architecture.md shows the flow.
"""

from prunekit.config import PruningConfig, get_pattern, load_config, load_configs
from prunekit.errors import (
    CalibrationError,
    ConfigError,
    DimOutOfRangeError,
    ImpossibleTargetError,
    IndivisibleShapeError,
    InvalidSpecError,
    MaskFileError,
    NameTakenError,
    OpSelectionError,
    PluginWarning,
    PrunekitError,
    PruningWarning,
    ScoreError,
    UnknownCriterionError,
    UnknownNameError,
    UnknownPatternError,
    UnknownScheduleError,
    UnsupportedModuleError,
)
from prunekit.masks import (
    AxisLayout,
    BlockLayout,
    BlockOptions,
    GridLayout,
    GroupLayout,
    Pattern,
    PatternOptions,
    ReduceOptions,
)
from prunekit.masks.modules import strip_masks
from prunekit.plugins import (
    CRITERIA,
    PATTERNS,
    SCHEDULES,
    PluginHost,
    Register,
    hookimpl,
    list_patterns,
    load_plugins,
    register_pattern,
)
from prunekit.slim.hf import load_slimmed
from prunekit.slim.plan import SlimPlanError, apply_slim_plan
from prunekit.slim.slimming import SlimError, SlimReport, slim
from prunekit.slim.trace import TraceError
from prunekit.training import LayerReport, OpReport, Pruner, PruningReport, prune, prune_in_place
from prunekit.training.coupled import CouplingError
from prunekit.training.criteria import Criterion, criterion

__version__ = "0.1.0"

__all__ = [
    "CRITERIA",
    "PATTERNS",
    "SCHEDULES",
    "AxisLayout",
    "BlockLayout",
    "BlockOptions",
    "CalibrationError",
    "ConfigError",
    "CouplingError",
    "Criterion",
    "DimOutOfRangeError",
    "GridLayout",
    "GroupLayout",
    "ImpossibleTargetError",
    "IndivisibleShapeError",
    "InvalidSpecError",
    "LayerReport",
    "MaskFileError",
    "NameTakenError",
    "OpReport",
    "OpSelectionError",
    "Pattern",
    "PatternOptions",
    "PluginHost",
    "PluginWarning",
    "PrunekitError",
    "Pruner",
    "PruningConfig",
    "PruningReport",
    "PruningWarning",
    "ReduceOptions",
    "Register",
    "ScoreError",
    "SlimError",
    "SlimPlanError",
    "SlimReport",
    "TraceError",
    "UnknownCriterionError",
    "UnknownNameError",
    "UnknownPatternError",
    "UnknownScheduleError",
    "UnsupportedModuleError",
    "__version__",
    "apply_slim_plan",
    "criterion",
    "get_pattern",
    "hookimpl",
    "list_patterns",
    "load_config",
    "load_configs",
    "load_plugins",
    "load_slimmed",
    "prune",
    "prune_in_place",
    "register_pattern",
    "slim",
    "strip_masks",
]
