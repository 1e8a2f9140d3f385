"""Drop-in layers for scripts written against other pruning toolkits.

:mod:`prunekit.compat.inc` runs scripts written for Intel Neural Compressor 3.7.1's pruner
(``WeightPruningConfig``, ``prepare_compression``, ``prepare_pruning`` and the ``on_*``
callbacks), which INC removed in 2026-03, on prunekit's ``Pruner``: such a script changes its
imports and nothing else (docs/migrating-from-inc.md).

This package sits at the top of prunekit's layers: it uses the training and config layers,
and nothing in prunekit imports it, so ``import prunekit`` never loads it.
"""
