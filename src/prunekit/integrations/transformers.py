"""Pruning during Hugging Face ``Trainer`` training: :class:`PruningCallback`.

The callback builds one :class:`~prunekit.Pruner` per ``trainer.train()`` and drives it from
the Trainer's events:

* ``on_train_begin``: the Pruner is built on the plain model (the one inside DDP,
  DataParallel or ``torch.compile``, so op names are the model's own) with the Trainer's
  optimizer, whose moments of removed weights it zeroes. When the Trainer resumes from a
  checkpoint, the Pruner's state is read back from that checkpoint's ``prunekit_pruner.pt``.
* ``on_optimizer_step``: ``pruner.step()``. The Trainer calls it right after
  ``optimizer.step()`` and before ``model.zero_grad()``: once per optimizer step whatever the
  gradient accumulation, with the gradients (under DDP already averaged) that gradient
  criteria read still there. ``on_step_end`` comes after ``zero_grad()``, too late for them.
  So the Pruner's step is the Trainer's ``state.global_step`` before that step counts.
* ``on_save``: the Pruner's state goes into every checkpoint folder.
* ``on_log``: achieved and target sparsity join the Trainer's logs.
* ``on_train_end``: the best checkpoint's masks when the Trainer loaded the best model; then
  optionally the masks baked in (``remove_masks``) and the model slimmed (``slim``).

Under DDP every rank holds the whole model, with identical weights and averaged gradients,
so every rank computes the same masks. After each mask update the ranks still compare
digests of their masks, and should they differ (a criterion that scores from data local to a
rank) every rank takes rank 0's masks, weights and optimizer state, with a warning.

This module imports ``transformers``; nothing in prunekit imports it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from transformers.trainer_callback import TrainerCallback, TrainerControl, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.training_args import TrainingArguments

from prunekit.config.files import ConfigSource, load_configs
from prunekit.errors import ConfigError, MaskFileError, PrunekitError, PruningWarning
from prunekit.plugins.host import PluginHost
from prunekit.slim.slimming import SlimReport
from prunekit.slim.slimming import slim as slim_model
from prunekit.training.pruner import Pruner
from prunekit.training.report import PruningReport

STATE_FILE = "prunekit_pruner.pt"
"""The file in each checkpoint folder that holds the Pruner's ``state_dict()``."""
SPARSITY_KEY = "sparsity"
"""Log key: the fraction of the pruned ops' weights that are removed now."""
TARGET_KEY = "target_sparsity"
"""Log key: the schedule's target in force, weighted by each op's number of weights."""

_ARGUMENTS = "PruningCallback arguments"


class PruningCallback(TrainerCallback):
    """Prunes the Trainer's model by ``configs`` while it trains.

    ``configs``: one pruning config or a list of them (dicts, :class:`~prunekit.PruningConfig`,
    YAML or JSON paths), validated here, before the Trainer exists; their steps are the
    Trainer's optimizer steps. ``remove_masks``: when training ends, bake the masks into the
    weights, so that the model is a plain model again (``callback.pruner.report()`` still
    tells what was removed). ``slim``: then remove the pruned channels, neurons and heads for
    good with :func:`prunekit.slim`, which traces the model on ``example_inputs`` (what it is
    called with: a dict of keyword arguments for a transformers model); ``example_inputs`` also
    go to the Pruner, for coupled configs. ``resume_from_checkpoint``: the checkpoint folder to
    read the Pruner's state from when the Trainer resumes, needed only for a folder other than
    ``args.resume_from_checkpoint`` or ``<output_dir>/checkpoint-<global step>`` (where the
    Trainer's own ``resume_from_checkpoint=True`` points). ``host``: the plugin host the
    configs' names are resolved against (default: the process's).

    :attr:`pruner` is the Pruner from ``on_train_begin`` on; :attr:`slim_report` says what
    slimming changed.
    """

    def __init__(
        self,
        configs: ConfigSource | Sequence[ConfigSource],
        *,
        remove_masks: bool = True,
        slim: bool = False,
        example_inputs: Any = None,
        resume_from_checkpoint: str | os.PathLike[str] | None = None,
        host: PluginHost | None = None,
    ) -> None:
        self.configs = load_configs(list(configs) if _is_sequence(configs) else configs, host=host)
        if slim and example_inputs is None:
            raise ConfigError(
                [
                    "slim: True needs example_inputs, what the model is called with (such as "
                    "{'input_ids': torch.ones(1, 8, dtype=torch.long)}), to trace the model; "
                    "or leave slim=False and call prunekit.slim(model, example_inputs) later"
                ],
                _ARGUMENTS,
            )
        if slim and not remove_masks:
            raise ConfigError(
                [
                    "remove_masks: False contradicts slim=True, which bakes the masks in "
                    "before it removes what they removed; drop one of the two"
                ],
                _ARGUMENTS,
            )
        self.remove_masks = remove_masks
        self.slim = slim
        self.example_inputs = example_inputs
        self.resume_from_checkpoint = resume_from_checkpoint
        self.host = host
        self.pruner: Pruner | None = None
        self.slim_report: SlimReport | None = None
        self._finished = False
        self._warned_disagreement = False

    # -- the Trainer's events ------------------------------------------------------------------
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        """Build the Pruner on the plain model; on a resumed run, restore its state."""
        if model is None:
            raise PrunekitError("PruningCallback: the Trainer passed no model to on_train_begin")
        plain = unwrap_model(model)
        _refuse_sharded(plain)
        self.pruner = Pruner(
            plain,
            self.configs,
            optimizer=optimizer,
            host=self.host,
            example_inputs=_on_device(self.example_inputs, _device(plain)),
        )
        self._finished = False
        if state.global_step > 0:  # the Trainer restored its state from a checkpoint
            folder = self._resume_folder(args, state)
            load_pruner_state(self.pruner, folder / STATE_FILE, step=state.global_step)

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """One Pruner step per optimizer step, before the gradients are zeroed."""
        pruner = self._attached()
        before = [group.applied_target for group in pruner.groups]
        pruner.step()
        if [group.applied_target for group in pruner.groups] != before:
            self._agree(pruner, state)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Check that the Pruner took this optimizer step (a loop that never calls
        ``on_optimizer_step`` would otherwise never prune, silently)."""
        pruner = self._attached()
        if pruner.current_step != state.global_step:
            raise PrunekitError(
                f"PruningCallback: the Trainer is at global step {state.global_step} but the "
                f"Pruner took {pruner.current_step} steps: this Trainer does not call "
                "on_optimizer_step after each optimizer step (transformers older than 4.42 "
                "has no such event; or a training loop that skips it): upgrade transformers, "
                "or call callback.pruner.step() after each optimizer.step() yourself"
            )

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Write the Pruner's state into the checkpoint folder the Trainer just wrote."""
        if self.pruner is None or not args.should_save:
            return
        folder = Path(args.output_dir or ".") / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not folder.is_dir():
            warnings.warn(
                f"PruningCallback: no checkpoint folder {str(folder)!r} to save the Pruner's "
                "state in (a hyperparameter search run?); resuming from this checkpoint will "
                "not find it",
                PruningWarning,
                stacklevel=2,
            )
            return
        save_pruner_state(self.pruner, folder / STATE_FILE)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add :data:`SPARSITY_KEY` and :data:`TARGET_KEY` to ``logs`` and to the entry the
        Trainer just appended to ``state.log_history`` (a copy made before callbacks run)."""
        if self.pruner is None or logs is None:
            return
        added = sparsity_logs(self.pruner.report())
        history = state.log_history
        last = history[-1] if history else {}
        if last.get("step") == state.global_step and all(key in last for key in logs):
            last.update(added)
        logs.update(added)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Take the best checkpoint's masks if the Trainer loaded its weights, then bake the
        masks in and slim, as asked."""
        if self.pruner is None or self._finished:
            return
        pruner = self.pruner
        best = state.best_model_checkpoint
        if args.load_best_model_at_end and best is not None:
            # the Trainer put the best checkpoint's weights back: its masks belong with them
            load_pruner_state(pruner, Path(best) / STATE_FILE, step=None)
        self._finished = True
        if self.remove_masks:
            pruner.remove()
        if self.slim:
            model = pruner.model
            self.slim_report = slim_model(model, _on_device(self.example_inputs, _device(model)))

    # -- helpers -------------------------------------------------------------------------------
    def _attached(self) -> Pruner:
        if self.pruner is None:
            raise PrunekitError(
                "PruningCallback: the Trainer stepped before on_train_begin built the Pruner; "
                "pass the callback to Trainer(callbacks=[...]) or trainer.add_callback() "
                "before trainer.train()"
            )
        return self.pruner

    def _resume_folder(self, args: TrainingArguments, state: TrainerState) -> Path:
        """The checkpoint folder the Trainer resumes from, as far as a callback can tell
        (the Trainer does not pass it): ours, the arguments', or where the Trainer's own
        ``resume_from_checkpoint=True`` and checkpoint paths point. The first folder holding
        a state file wins; without one, the error names every folder looked at."""
        named = [self.resume_from_checkpoint, getattr(args, "resume_from_checkpoint", None)]
        candidates = [Path(os.fspath(p)) for p in named if isinstance(p, (str, os.PathLike))]
        candidates.append(
            Path(args.output_dir or ".") / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        )
        for folder in candidates:
            if (folder / STATE_FILE).is_file():
                return folder
        looked = ", ".join(repr(str(folder)) for folder in dict.fromkeys(candidates))
        raise MaskFileError(
            f"resume_from_checkpoint: the Trainer resumes at global step {state.global_step} "
            f"but no {STATE_FILE} is in {looked}: that checkpoint was saved without "
            "PruningCallback, so its masks and schedule position are unknown. Resume from a "
            "checkpoint that PruningCallback saved (name a folder outside output_dir with "
            "PruningCallback(..., resume_from_checkpoint=FOLDER)); to prune a model from a "
            "dense checkpoint, load it with from_pretrained and train without "
            "resume_from_checkpoint"
        )

    def _agree(self, pruner: Pruner, state: TrainerState) -> None:
        differing = agree_across_ranks(pruner)
        if differing and not self._warned_disagreement:
            self._warned_disagreement = True
            warnings.warn(
                f"PruningCallback: at global step {state.global_step} the ranks computed "
                f"different masks for {len(differing)} op(s) ({', '.join(differing[:4])}"
                f"{' ...' if len(differing) > 4 else ''}); every rank now has rank 0's masks, "
                "weights and optimizer state for them. A criterion that scores from data "
                "local to a rank does this; the built-in criteria do not",
                PruningWarning,
                stacklevel=2,
            )


# -- the model the Trainer trains ------------------------------------------------------------
def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP, DataParallel and ``torch.compile`` wrappers (its module
    names are the op names configs match), however deeply they nest."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            inner = model.module
        else:
            inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _refuse_sharded(model: nn.Module) -> None:
    """A Pruner needs each weight whole on every rank; FSDP and DeepSpeed ZeRO-3 shard them."""
    sharded = any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()) or any(
        type(p).__name__ == "DTensor" or (p.numel() == 0 and hasattr(p, "ds_id"))
        for p in model.parameters()
    )
    if sharded:
        raise PrunekitError(
            "PruningCallback: the model's weights are sharded across ranks (FSDP or DeepSpeed "
            "ZeRO-3), and a Pruner needs every weight whole on each rank; train with DDP (or "
            "ZeRO stage 1 or 2), or prune after training with prunekit.prune"
        )


def _device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _on_device(value: Any, device: torch.device) -> Any:
    """``value`` (tensors, possibly in dicts, lists or tuples) with every tensor on
    ``device``: example inputs are written on the CPU, the model may train elsewhere."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {key: _on_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_on_device(item, device) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


# -- the Pruner's state in a checkpoint ------------------------------------------------------
def save_pruner_state(pruner: Pruner, file: Path) -> None:
    """Write ``pruner.state_dict()`` (tensors on the CPU, plain data otherwise, so that
    ``torch.load(weights_only=True)`` reads it) to ``file``, atomically: a crash mid-write
    leaves no half file for a resume to trip on."""
    partial = file.with_name(file.name + ".partial")
    torch.save(_on_cpu(pruner.state_dict()), partial)
    os.replace(partial, file)


def load_pruner_state(pruner: Pruner, file: Path, *, step: int | None) -> None:
    """Restore ``pruner`` from a file :func:`save_pruner_state` wrote, after checking that it
    belongs with the model's weights: at the Trainer's global ``step`` (when given) and with
    every weight its masks remove at zero. Nothing changes when a check fails."""
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise MaskFileError(f"cannot read the Pruner's state from {str(file)!r}: {exc}") from None
    if not isinstance(saved, dict):
        raise MaskFileError(f"{str(file)!r} does not hold a Pruner state dict")
    if step is not None and saved.get("step") != step:
        raise MaskFileError(
            f"{str(file)!r} holds the Pruner at step {saved.get('step')!r}, but the Trainer "
            f"resumes at global step {step}: the file belongs to another checkpoint"
        )
    _check_zeros(pruner, saved.get("masks"), file)
    try:
        pruner.load_state_dict(saved)
    except MaskFileError as exc:
        raise MaskFileError(
            f"{str(file)!r}: {exc} (the configs given to PruningCallback)"
        ) from None


def _check_zeros(pruner: Pruner, masks: Any, file: Path) -> None:
    """Refuse masks whose removed weights are not zero in the model: the checkpoint's weights
    were saved with them at zero, so such a file comes from another run or step. Masks that
    do not fit the ops at all are left to ``load_state_dict``, which names what is wrong."""
    if not isinstance(masks, Mapping):
        return
    wrong = []
    for name, module in pruner.ops.items():
        mask, weight = masks.get(name), getattr(module, "weight", None)
        if not isinstance(mask, Tensor) or not isinstance(weight, Tensor):
            continue
        if mask.dtype != torch.bool or mask.shape != weight.shape:
            continue
        nonzero = int((weight.detach()[~mask.to(weight.device)] != 0).sum())
        if nonzero:
            wrong.append(f"{name!r} ({nonzero} weights)")
    if wrong:
        raise MaskFileError(
            f"{str(file)!r} does not match the model's weights: its masks remove weights that "
            f"are not zero in {', '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}; the "
            "Pruner's state and the weights come from different runs or checkpoints"
        )


def _on_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().to("cpu")
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_on_cpu(item) for item in value]
    return value


# -- logs --------------------------------------------------------------------------------------
def sparsity_logs(report: PruningReport) -> dict[str, float]:
    """The sparsity the pruned ops have and the target in force, over the same weights."""
    elements = report.elements
    target = sum(op.target * op.elements for op in report.ops) / elements if elements else 0.0
    return {SPARSITY_KEY: report.achieved, TARGET_KEY: target}


# -- ranks -------------------------------------------------------------------------------------
def agree_across_ranks(pruner: Pruner) -> list[str]:
    """Make every rank's masks rank 0's; return the ops whose masks differed (none, unless a
    criterion scored from data local to a rank).

    Every rank gathers a 64-bit digest of each op's mask from every rank; where one differs,
    rank 0 broadcasts its Pruner state and those ops' weights and optimizer state, which the
    other ranks take. Outside torch.distributed (or on one rank) there is nothing to do.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return []
    device = _collective_device()
    masks = pruner.masks
    names = list(masks)
    mine = torch.tensor([_digest(masks[name]) for name in names], dtype=torch.int64)
    everyone = [torch.empty_like(mine, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine.to(device))
    digests = torch.stack(everyone).cpu()
    differing = [n for i, n in enumerate(names) if bool((digests[:, i] != digests[0, i]).any())]
    if not differing:
        return []
    state = [_on_cpu(pruner.state_dict()) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(state, src=0)
    for name in differing:
        for tensor in _training_tensors(pruner, name):
            shipped = tensor.detach().to(device)
            dist.broadcast(shipped, src=0)
            with torch.no_grad():
                tensor.copy_(shipped)
    if dist.get_rank() != 0:
        pruner.load_state_dict(state[0])  # type: ignore[arg-type]
    return differing


def _training_tensors(pruner: Pruner, name: str) -> list[Tensor]:
    """An op's weight and the optimizer state shaped like it (moments), in a fixed order."""
    weight = pruner.ops[name].weight
    assert isinstance(weight, Tensor)
    found = [weight]
    if pruner.optimizer is not None:
        state = pruner.optimizer.state.get(weight, {})
        found += [
            state[key]
            for key in sorted(state, key=str)
            if isinstance(state[key], Tensor) and state[key].shape == weight.shape
        ]
    return found


def _digest(mask: Tensor) -> int:
    """A 64-bit digest of a bool mask: equal masks give equal digests, and different ones
    (almost surely) do not."""
    bits = np.packbits(mask.detach().to("cpu").reshape(-1).numpy())
    digest = hashlib.blake2b(bits.tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _collective_device() -> torch.device:
    """NCCL exchanges only CUDA tensors; other backends (gloo) take CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _is_sequence(value: object) -> TypeGuard[Sequence[Any]]:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


__all__ = [
    "SPARSITY_KEY",
    "STATE_FILE",
    "TARGET_KEY",
    "PruningCallback",
    "agree_across_ranks",
    "load_pruner_state",
    "save_pruner_state",
    "sparsity_logs",
    "unwrap_model",
]
