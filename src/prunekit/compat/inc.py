"""Intel Neural Compressor 3.7.1's pruning API on prunekit: change the imports, keep the script.

INC removed its pruner in 2026-03 (3.7.1 is the last release with it). A script written
against it runs here with its imports changed and nothing else::

    # from neural_compressor.training import prepare_compression, WeightPruningConfig
    from prunekit.compat.inc import prepare_compression, WeightPruningConfig

    config = WeightPruningConfig(configs, target_sparsity=0.8, start_step=1, end_step=1000)
    compression_manager = prepare_compression(model, config)
    compression_manager.callbacks.on_train_begin()
    ...  # INC's on_step_begin / on_before_optimizer_step / on_after_optimizer_step loop

or, INC 3.x's automatic form, ``prepare_pruning(model, config, optimizer)``, after which the
model's forward and ``optimizer.step()`` do the pruning. Under the hood every INC pruner is a
prunekit config run by :class:`prunekit.Pruner` in INC's order of scoring and masking
(:mod:`prunekit.compat.inc_pruning`); every INC key maps onto prunekit's or is named in an
:class:`IncCompatWarning` or an :class:`UnsupportedIncKeyError`
(:mod:`prunekit.compat.inc_keys`). docs/migrating-from-inc.md has the tables and the
differences.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.compat.inc_config import DotDict, WeightPruningConfig
from prunekit.compat.inc_keys import INC_VERSION, IncCompatWarning, UnsupportedIncKeyError
from prunekit.compat.inc_pruning import BasicPruning, IncPruner, classifier_head
from prunekit.errors import PrunekitError
from prunekit.training.pruner import Pruner
from prunekit.training.report import PruningReport


class IncModel(nn.Module):
    """INC's ``compression_manager.model``: the user's model wrapped, callable like it;
    ``.model`` is the model itself, ``save(root)`` writes its state dict to
    ``root/best_model.pt`` as INC does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._model(*args, **kwargs)

    @property
    def model(self) -> nn.Module:
        """The wrapped model (INC's name for it)."""
        return self._model

    @property
    def fp32_model(self) -> nn.Module:
        """INC keeps the model before compression under this name; pruning changes the
        model in place, so it is the same model."""
        return self._model

    @property
    def framework(self) -> str:
        """INC's models say which framework they are; this one is PyTorch."""
        return "pytorch"

    def save(self, root: str | os.PathLike[str] | None = None) -> str:
        """The model's state dict in ``root/best_model.pt`` (INC's default root: a dated
        folder under ``./nc_workspace``); returns the file written."""
        if root is None:
            stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            root = os.path.join("nc_workspace", stamp)
        folder = os.path.abspath(os.path.expanduser(os.fspath(root)))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "best_model.pt")
        torch.save(self._model.state_dict(), path)
        return path


class PruningCallbacks:
    """INC's ``PruningCallbacks``: the pruners of one WeightPruningConfig on the model, with
    INC's ``on_*`` methods; ``pruners`` are INC's pruners (``.config``, ``.modules``)."""

    def __init__(self, conf: WeightPruningConfig, model: IncModel) -> None:
        self.conf = conf
        self.model = model
        self.pruning = BasicPruning(conf, model.model)

    @property
    def pruners(self) -> list[IncPruner]:
        """INC's pruners of this config, in entry order."""
        return self.pruning.pruners

    def on_train_begin(self, dataloader: Any = None) -> None:
        self.pruning.on_train_begin(dataloader)

    def on_train_end(self) -> None:
        self.pruning.on_train_end()

    def on_epoch_begin(self, epoch: int) -> None:
        self.pruning.on_epoch_begin(epoch)

    def on_epoch_end(self) -> list[Any]:
        self.pruning.on_epoch_end()
        return []

    def on_step_begin(self, batch_id: int) -> None:
        self.pruning.on_step_begin(batch_id)

    def on_step_end(self) -> None:
        self.pruning.on_step_end()

    def on_before_optimizer_step(self) -> None:
        self.pruning.on_before_optimizer_step()

    def on_after_optimizer_step(self) -> None:
        self.pruning.on_after_optimizer_step()

    def on_before_eval(self) -> None:
        self.pruning.on_before_eval()

    def on_after_eval(self) -> None:
        self.pruning.on_after_eval()

    def __repr__(self) -> str:
        return "Pruning Callbacks"


class CallBacks:
    """INC's ``compression_manager.callbacks``: each ``on_*`` with INC's signature, passed
    to every callbacks object in ``callbacks_list``."""

    def __init__(self, callbacks_list: Sequence[PruningCallbacks]) -> None:
        if not callbacks_list:
            raise ValueError("CallBacks needs at least one callbacks object, as in INC")
        self.callbacks_list = list(callbacks_list)

    def on_train_begin(self, dataloader: Any = None) -> None:
        for callbacks in self.callbacks_list:
            callbacks.on_train_begin(dataloader)

    def on_train_end(self) -> None:
        for callbacks in self.callbacks_list:
            callbacks.on_train_end()

    def on_epoch_begin(self, epoch: int) -> None:
        for callbacks in self.callbacks_list:
            callbacks.on_epoch_begin(epoch)

    def on_step_begin(self, batch_id: int) -> list[Any]:
        for callbacks in self.callbacks_list:
            callbacks.on_step_begin(batch_id)
        return []

    def on_after_compute_loss(
        self, input: Any, student_output: Any, student_loss: Any, teacher_output: Any = None
    ) -> Any:
        """The loss, unchanged: pruning adds no loss term. (INC returns an empty list here
        when only pruning is configured, which breaks ``loss.backward()``.)"""
        return student_loss

    def on_before_optimizer_step(self) -> None:
        for callbacks in self.callbacks_list:
            callbacks.on_before_optimizer_step()

    def on_after_optimizer_step(self) -> None:
        for callbacks in self.callbacks_list:
            callbacks.on_after_optimizer_step()

    def on_before_eval(self) -> None:
        for callbacks in self.callbacks_list:
            callbacks.on_before_eval()

    def on_after_eval(self) -> None:
        for callbacks in self.callbacks_list:
            callbacks.on_after_eval()

    def on_step_end(self) -> list[Any]:
        for callbacks in self.callbacks_list:
            callbacks.on_step_end()
        return []

    def on_epoch_end(self) -> list[Any]:
        results: list[Any] = []
        for callbacks in self.callbacks_list:
            results.extend(callbacks.on_epoch_end())
        return results


@dataclass(frozen=True)
class IncConf:
    """INC's ``compression_manager.conf``: which configs the manager runs (pruning only)."""

    pruning: WeightPruningConfig
    quantization: None = None
    benchmark: None = None
    distillation: None = None
    nas: None = None


class CompressionManager:
    """INC's compression manager for a WeightPruningConfig: ``model`` (the model wrapped as
    INC wraps it), ``callbacks``, ``conf``, ``save(root)``; beyond INC, ``pruning`` (the
    object the callbacks drive), ``prunekit_pruners`` and ``report()``."""

    def __init__(self, model: nn.Module, confs: Any, **kwargs: Any) -> None:
        conf = _pruning_config(confs)
        self.model = IncModel(model.model if isinstance(model, IncModel) else model)
        self.fp32_model = self.model
        self.conf = IncConf(pruning=conf)
        self.adaptor = None
        self.callbacks = CallBacks([PruningCallbacks(conf, self.model)])

    @property
    def pruning(self) -> BasicPruning:
        """The BasicPruning the callbacks drive."""
        return self.callbacks.callbacks_list[0].pruning

    @property
    def prunekit_pruners(self) -> list[Pruner]:
        """The prunekit Pruners doing the work."""
        return self.pruning.prunekit_pruners

    def report(self) -> PruningReport:
        """What the Pruners removed, per op (``config``: the INC entry) and in total."""
        return self.pruning.report()

    def save(self, root: str | os.PathLike[str] | None = None) -> str:
        """The model's state dict in ``root/best_model.pt``, as INC."""
        return self.model.save(root)

    def export(self, save_path: str, conf: Any) -> None:
        """INC's ONNX export belongs to its quantization tooling, not to pruning."""
        raise NotImplementedError(
            "INC's export (to ONNX) is not part of prunekit.compat.inc: a pruned model is a "
            "plain torch model, so export compression_manager.model.model with "
            "torch.onnx.export"
        )


def _pruning_config(confs: Any) -> WeightPruningConfig:
    """The one WeightPruningConfig of ``confs`` (itself, or a one-item list as INC allows);
    INC's other configs (quantization, distillation) are not prunekit's."""
    items: list[Any] = list(confs) if isinstance(confs, (list, tuple)) else [confs]
    for item in items:
        if not isinstance(item, WeightPruningConfig):
            raise TypeError(
                "prunekit.compat.inc runs INC's pruning only: expected a "
                f"prunekit.compat.inc.WeightPruningConfig, got {type(item).__name__} "
                "(INC's quantization-aware training and distillation configs are not ported)"
            )
    if len(items) != 1:
        raise PrunekitError(
            f"expected one WeightPruningConfig, got {len(items)}: put every pruner in one "
            "WeightPruningConfig(pruning_configs=[...]) (prunekit gives each op one pruner)"
        )
    config: WeightPruningConfig = items[0]
    return config


def prepare_compression(model: nn.Module, confs: Any, **kwargs: Any) -> CompressionManager:
    """INC's ``prepare_compression``: a CompressionManager whose ``callbacks`` the training
    loop calls (``on_train_begin``, ``on_step_begin(step)``, ``on_before_optimizer_step``,
    ``on_after_optimizer_step``, ...)."""
    return CompressionManager(model, confs, **kwargs)


def prepare_pruning(
    model: nn.Module,
    config: WeightPruningConfig,
    optimizer: torch.optim.Optimizer | None = None,
    dataloader: Any = None,
    loss_func: Any = None,
    framework: str = "pytorch",
    device: str | None = None,
) -> BasicPruning:
    """INC 3.x's ``prepare_pruning``: prune during training with no callback in the script.
    The model's forward starts each step (INC's forward pre-hook) and ``optimizer.step()``
    runs INC's before/after-optimizer-step work around itself (INC rewrites ``step``;
    prunekit uses torch's optimizer step hooks). Returns INC's pruning object.

    ``dataloader``, ``loss_func`` and ``device`` serve INC's post-training pruners
    (``sparse_gpt``, ``retrain_free``), which prunekit does not have: their configs are
    refused by name, and without an optimizer there is nothing to prune with."""
    if framework != "pytorch":
        raise ValueError(
            f"prepare_pruning supports the 'pytorch' framework only (as INC {INC_VERSION}), "
            f"got {framework!r}"
        )
    if optimizer is None:
        raise PrunekitError(
            "prepare_pruning needs the training optimizer, which it hooks to prune at every "
            "optimizer.step() (INC's post-training prunings with a dataloader, sparse_gpt and "
            "retrain_free, are not in prunekit); or use prepare_compression and call the "
            "callbacks"
        )
    pruning = BasicPruning(config, model.model if isinstance(model, IncModel) else model, optimizer)
    pruning.attach(model, optimizer)
    return pruning


__all__ = [
    "INC_VERSION",
    "BasicPruning",
    "CallBacks",
    "CompressionManager",
    "DotDict",
    "IncCompatWarning",
    "IncConf",
    "IncModel",
    "IncPruner",
    "PruningCallbacks",
    "UnsupportedIncKeyError",
    "WeightPruningConfig",
    "classifier_head",
    "prepare_compression",
    "prepare_pruning",
]
