"""The training layer: criteria (scores), schedules (targets over steps), op selection, the
Pruner (the one place that changes a model) and its reports."""

from prunekit.training.inplace import prune_in_place
from prunekit.training.ops import prunable_modules, select_all, select_ops
from prunekit.training.pruner import Pruner, prune
from prunekit.training.report import LayerReport, OpReport, PruningReport

__all__ = [
    "LayerReport",
    "OpReport",
    "Pruner",
    "PruningReport",
    "prunable_modules",
    "prune",
    "prune_in_place",
    "select_all",
    "select_ops",
]
