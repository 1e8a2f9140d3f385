"""prunekit inside other libraries' training loops.

:mod:`prunekit.integrations.transformers` holds :class:`PruningCallback`, which prunes
during Hugging Face ``Trainer`` training (docs/huggingface.md). Each module here imports the
library it integrates with, so this package imports none of them itself: ``import prunekit``
and ``import prunekit.integrations`` never load ``transformers``.

This package sits at the top of prunekit's layers: it uses the training and slimming
layers, and nothing in prunekit imports it.
"""
