"""The training layer: criteria (scores), schedules (targets over steps), op selection, the
Pruner (the one place that changes a model) and its reports."""

from prunekit.training.ops import prunable_modules, select_all, select_ops
from prunekit.training.pruner import Pruner, prune
from prunekit.training.report import OpReport, PruningReport

__all__ = [
    "OpReport",
    "Pruner",
    "PruningReport",
    "prunable_modules",
    "prune",
    "select_all",
    "select_ops",
]
