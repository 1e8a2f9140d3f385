"""The Pruner: the one place that changes a model.

It validates every config and selects every op before it touches anything; then, step by
step, it asks each config's schedule for the target, its criterion for scores and its
pattern for masks, and applies them. How masks live on a module (so that every copy of the
model keeps its removed weights at zero) is :mod:`prunekit.masks.modules`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.config.files import ConfigSource
from prunekit.config.model import PruningConfig
from prunekit.errors import (
    MaskFileError,
    PrunekitError,
    PruningWarning,
)
from prunekit.masks.modules import (
    BIAS_MASK_BUFFER,
    MASK_BUFFER,
    attach,
    carries_masks,
    detach,
)
from prunekit.masks.views import is_transposed_linear
from prunekit.plugins.host import PluginHost
from prunekit.training.calibration import Calibration
from prunekit.training.groups import Group as _Group
from prunekit.training.groups import checked_groups
from prunekit.training.report import PruningReport, calibration_layers, op_report
from prunekit.training.undo import Undo

STATE_FORMAT = "prunekit.Pruner"
STATE_VERSION = 1


ConfigInput = ConfigSource


class Pruner:
    """Prunes ``model`` by one config or a list of them, each over its own ops.

    ``optimizer`` (optional): its momentum and Adam moments of removed weights are zeroed
    whenever masks change. ``host``: the plugin host the configs' names are resolved
    against (default: the process's). Call :meth:`step` once per training step, after
    ``optimizer.step()``; :meth:`remove` when done.
    """

    def __init__(
        self,
        model: nn.Module,
        configs: ConfigInput | Sequence[ConfigInput],
        *,
        optimizer: torch.optim.Optimizer | None = None,
        host: PluginHost | None = None,
        example_inputs: Any = None,
        calibration_data: Any = None,
        calibration_device: Any = None,
    ) -> None:
        groups = checked_groups(model, configs, host, example_inputs)
        for group in groups:
            for name, module in group.ops.items():
                _check_free(name, module)
        # calibration (wanda, sparsegpt, OWL) planned and checked before anything changes
        self._calibration = Calibration.plan(model, groups, calibration_data, calibration_device)
        self.model = model
        self.optimizer = optimizer
        self.groups = groups
        self.current_step = 0
        self._removed = False
        self._baked: dict[str, Tensor] = {}
        self._attached: set[str] = set()  # ops given masks (they must keep them)
        for group in groups:  # masks a copy of a pruned model carries are the starting point
            for module in group.ops.values():
                if carries_masks(module):
                    adopted = getattr(module, MASK_BUFFER).clone()
                    detach(module)
                    self._attach(module, group.config, adopted)
        self._enforce()

    # -- what is there ------------------------------------------------------------------------
    @property
    def ops(self) -> dict[str, nn.Module]:
        """Every op this Pruner prunes, by name, in config order."""
        return {name: module for group in self.groups for name, module in group.ops.items()}

    @property
    def masks(self) -> dict[str, Tensor]:
        """Op name -> current bool mask of its weight (True = keep); all True before pruning,
        and after :meth:`remove` the masks that were baked into the weights."""
        if self._removed:
            return dict(self._baked)
        found = {}
        for name, module in self.ops.items():
            mask = getattr(module, MASK_BUFFER, None)
            found[name] = (
                mask
                if isinstance(mask, Tensor)
                else torch.ones_like(_tensor(module, "weight"), dtype=torch.bool)
            )
        return found

    # -- pruning ------------------------------------------------------------------------------
    def step(self) -> None:
        """Follow the schedule one training step: update masks when the target rises, keep
        removed weights at zero. Call after ``optimizer.step()``."""
        self._check_attached()
        states: dict[int, dict[str, Tensor]] = {}
        updates: dict[int, tuple[float, dict[str, Tensor]]] = {}
        calibrating = self._calibrating_due()
        for group in self.groups:  # compute everything first: a failure changes nothing
            if self._calibration is not None and self._calibration.handles(group.index):
                continue  # pruned from calibration data, below
            if group.stateful:
                states[group.index] = self._scores(group, use_state=True)
            target = group.schedule(self.current_step)
            if target > group.applied_target + 1e-12:
                scores = (
                    states[group.index] if group.stateful else self._scores(group, use_state=False)
                )
                updates[group.index] = (target, self._masks_for(group, scores, target))
        if calibrating:  # undone in full if it fails, before anything else changes
            self._calibrated_prune(calibrating)
        for index, state in states.items():
            self.groups[index].state = state
        for index, (target, masks) in updates.items():
            self._apply(self.groups[index], masks)
            self.groups[index].applied_target = target
            self._check_hardware_validity(self.groups[index])
        self._enforce()
        self.current_step += 1

    def prune_now(self, target: float | None = None) -> None:
        """Reach ``target`` (default: each config's ``target_sparsity``) at once, with each
        config's criterion. Used by :func:`prune`; criteria that need gradients need a
        backward pass first."""
        self._check_attached()
        if self._calibration is not None:
            goals = {
                g.index: g.config.target_sparsity if target is None else target for g in self.groups
            }
            self._calibrated_prune(goals)
            return
        updates = []
        for group in self.groups:
            goal = group.config.target_sparsity if target is None else target
            scores = self._scores(group, use_state=False, one_shot=True)
            updates.append((group, goal, self._masks_for(group, scores, goal)))
        for group, goal, masks in updates:
            self._apply(group, masks)
            group.applied_target = max(group.applied_target, goal)
            self._check_hardware_validity(group)
        self._enforce()

    def _calibrating_due(self) -> dict[int, float]:
        """The calibrating configs whose schedule rises at this step, with their targets."""
        calibration = self._calibration
        if calibration is None:
            return {}
        due = {g.index: g.schedule(self.current_step) for g in self.groups}
        return {
            i: t
            for i, t in due.items()
            if calibration.handles(i) and t > self.groups[i].applied_target + 1e-12
        }

    def _calibrated_prune(self, goals: Mapping[int, float]) -> None:
        """Reach ``goals`` (config index -> target) with calibration: the other configs'
        masks first, then the calibrating configs block by block on the pruned model. Every
        change is recorded, and a failure puts every weight and mask back."""
        assert self._calibration is not None
        calibration, undo, attached = self._calibration, Undo(), set(self._attached)
        plain = [g for g in self.groups if g.index in goals and not calibration.handles(g.index)]
        computed = [
            (g, self._masks_for(g, self._scores(g, use_state=False, one_shot=True), goals[g.index]))
            for g in plain
        ]
        try:
            for group, masks in computed:
                for name, mask in masks.items():
                    self._apply_one(group.index, name, mask, undo)
            calibration.run(
                {i: t for i, t in goals.items() if calibration.handles(i)},
                lambda index, name, mask: self._apply_one(index, name, mask),
                undo,
            )
        except BaseException:
            undo.rollback()
            self._attached = attached
            raise
        undo.forget()
        for group in self.groups:
            if group.index in goals:
                group.applied_target = max(group.applied_target, goals[group.index])
                self._check_hardware_validity(group)
        self._enforce()

    def _apply_one(self, index: int, name: str, mask: Tensor, undo: Undo | None = None) -> None:
        """Op ``name`` of config ``index`` gets ``mask`` and its removed weights are zeroed
        now (calibration reads the pruned model; ``undo`` records what it removes)."""
        group = self.groups[index]
        module = group.ops[name]
        if bool(mask.all()) and not hasattr(module, MASK_BUFFER):
            return
        if undo is not None:
            undo.masked(module, mask)
        self._apply(group, {name: mask})
        with torch.no_grad():
            weight = _tensor(module, "weight")
            weight.mul_(mask.to(weight.device))

    def _check_hardware_validity(self, group: _Group) -> None:
        """Once a config reaches its final target: warn when masks of a pattern that has a
        hardware layout (N:M) are not in it, naming how many ops and which."""
        if group.applied_target + 1e-12 < group.config.target_sparsity:
            return
        masks = {name: getattr(m, MASK_BUFFER, None) for name, m in group.ops.items()}
        invalid = [
            name
            for name, mask in masks.items()
            if name not in group.pattern.skipped
            and isinstance(mask, Tensor)
            and group.pattern.is_hardware_valid(name, mask) is False
        ]
        if invalid:
            pruned = len(group.ops) - len(group.pattern.skipped)
            warnings.warn(
                f"config {group.index} (pattern {group.config.pattern!r}) at target "
                f"{group.config.target_sparsity:g}: {len(invalid)} of {pruned} pruned ops are "
                f"not hardware-valid (some groups stay dense): "
                + ", ".join(map(repr, invalid[:6]))
                + (" ..." if len(invalid) > 6 else "")
                + "; sparse hardware needs the target at N/M",
                PruningWarning,
                stacklevel=3,
            )

    def _scores(
        self, group: _Group, *, use_state: bool, one_shot: bool = False
    ) -> dict[str, Tensor]:
        scores = {}
        for name, module in group.ops.items():
            weight = _tensor(module, "weight")
            grad = weight.grad if group.needs_grad else None
            if group.needs_grad and grad is None:
                raise PrunekitError(
                    f"criterion {group.config.criterion!r} needs gradients, but op {name!r} "
                    "has none: "
                    + (
                        "run a forward pass and loss.backward() on a batch before pruning in "
                        "one shot (pk.prune / prune_now read weight.grad), or use a criterion "
                        "that needs none, such as 'magnitude'"
                        if one_shot
                        else "call pruner.step() after loss.backward() and optimizer.step(), "
                        "before optimizer.zero_grad()"
                    )
                )
            scores[name] = group.criterion(
                weight.detach(),
                grad=None if grad is None else grad.detach(),
                state=group.state.get(name) if use_state else None,
                generator=group.generator,
            )
        return scores

    def _masks_for(
        self, group: _Group, scores: dict[str, Tensor], target: float
    ) -> dict[str, Tensor]:
        current = {
            name: getattr(m, MASK_BUFFER)
            for name, m in group.ops.items()
            if hasattr(m, MASK_BUFFER)
        }
        return group.pattern.get_masks(scores, target, pre_masks=current or None)

    def _apply(self, group: _Group, masks: Mapping[str, Tensor]) -> None:
        for name, mask in masks.items():
            module = group.ops[name]
            if hasattr(module, MASK_BUFFER):
                getattr(module, MASK_BUFFER).copy_(mask)
            elif bool(mask.all()):
                continue  # nothing removed yet: attach nothing
            else:
                self._attach(module, group.config, mask)
            self._zero_optimizer_state(module, mask)

    def _attach(self, module: nn.Module, config: PruningConfig, mask: Tensor | None) -> None:
        """Give ``module`` prunekit's mask buffer and hooks (its adopted mask when given)."""
        weight = _tensor(module, "weight")
        kept = mask if mask is not None else torch.ones_like(weight, dtype=torch.bool)
        attach(module, kept.to(weight.device), bias=config.prune_bias)
        self._attached.update(n for n, m in self.ops.items() if m is module)

    def _enforce(self) -> None:
        """Removed weights (and biases of removed output channels) read as zero."""
        with torch.no_grad():
            for module in self.ops.values():
                mask = getattr(module, MASK_BUFFER, None)
                if not isinstance(mask, Tensor):
                    continue
                _tensor(module, "weight").mul_(mask)
                bias_mask = getattr(module, BIAS_MASK_BUFFER, None)
                if isinstance(bias_mask, Tensor):
                    bias_mask.copy_(_output_channels_kept(module, mask))
                    _tensor(module, "bias").mul_(bias_mask)

    def _zero_optimizer_state(self, module: nn.Module, mask: Tensor) -> None:
        if self.optimizer is None:
            return
        state = self.optimizer.state.get(_tensor(module, "weight"), {})
        with torch.no_grad():
            for value in state.values():
                if isinstance(value, Tensor) and value.shape == mask.shape:
                    value.mul_(mask)

    # -- leaving ------------------------------------------------------------------------------
    def remove(self) -> nn.Module:
        """Bake the masks into the weights and detach: the model is a plain model again
        (:meth:`report` and :attr:`masks` still tell what was removed)."""
        self._check_attached()
        self._enforce()
        self._baked = {name: mask.clone() for name, mask in self.masks.items()}
        for module in self.ops.values():
            detach(module)
        self._removed = True
        return self.model

    def _check_attached(self) -> None:
        if self._removed:
            raise PrunekitError("this Pruner was removed; create a new one to prune again")
        gone = [name for name in self._attached if not carries_masks(self.ops[name])]
        if gone:
            raise PrunekitError(
                f"op {gone[0]!r} no longer carries this Pruner's masks (pk.slim or "
                "pk.strip_masks baked them, or the module was replaced): this Pruner is done "
                "with the model; create a new one to prune it again"
            )

    # -- reports ------------------------------------------------------------------------------
    def report(self) -> PruningReport:
        """Per op and in total: pattern, target, achieved sparsity, hardware validity, notes."""
        ops = []
        masks = self.masks
        for group in self.groups:
            for name, module in group.ops.items():
                mask = masks[name]
                valid = group.pattern.is_hardware_valid(name, mask)
                note = ""
                if valid is False and group.applied_target > 0:
                    note = "not hardware-valid: some groups are not N:M"
                removed = int((~mask).sum())
                target = self._op_target(group, name)
                shape = tuple(mask.shape)
                ops.append(op_report(group, name, module, shape, removed, target, valid, note))
        layers = () if self._calibration is None else calibration_layers(self._calibration)
        return PruningReport(step=self.current_step, ops=tuple(ops), layers=layers)

    def _op_target(self, group: _Group, name: str) -> float:
        """The target op ``name`` was pruned to: its block's under OWL, else its config's."""
        calibration = self._calibration
        if calibration is not None and calibration.handles(group.index) and group.applied_target:
            return calibration.op_targets.get(name, group.applied_target)
        return group.applied_target

    # -- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Masks, schedule position and criterion state: what :meth:`load_state_dict` needs
        to resume exactly where this Pruner is."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self.current_step,
            "configs": [group.config.model_dump() for group in self.groups],
            "applied_targets": [group.applied_target for group in self.groups],
            "masks": {name: mask.clone() for name, mask in self.masks.items()},
            "criterion_state": {
                name: t.clone() for g in self.groups for name, t in g.state.items()
            },
            "generators": [group.generator.get_state() for group in self.groups],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`; checked in full before anything changes."""
        self._check_attached()
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise MaskFileError(f"not a prunekit Pruner state dict (no 'format': {STATE_FORMAT!r})")
        if state.get("version") != STATE_VERSION:
            raise MaskFileError(
                f"Pruner state version {state.get('version')!r}; this prunekit "
                f"reads version {STATE_VERSION}"
            )
        saved = state.get("configs", [])
        mine = [group.config.model_dump() for group in self.groups]
        if saved != mine:
            raise MaskFileError(_config_difference(saved, mine))
        masks = self._check_masks(state["masks"], "state dict")
        criterion_state = dict(state.get("criterion_state", {}))
        for name, value in criterion_state.items():
            if name not in self.ops or tuple(value.shape) != tuple(
                _tensor(self.ops[name], "weight").shape
            ):
                raise MaskFileError(
                    f"state dict: criterion state for {name!r} does not fit the Pruner's ops"
                )
        self._load_masks(masks)
        for group, target, generator in zip(
            self.groups, state["applied_targets"], state["generators"], strict=True
        ):
            group.applied_target = float(target)
            group.state = {
                n: criterion_state[n].to(_tensor(m, "weight").device)
                for n, m in group.ops.items()
                if n in criterion_state
            }
            group.generator.set_state(generator)
        self.current_step = int(state["step"])

    def save_masks(self, path: str | os.PathLike[str]) -> None:
        """Write every op's mask to a safetensors file (no pickle), named by op."""
        from safetensors.torch import save_file

        tensors = {name: mask.detach().to("cpu").contiguous() for name, mask in self.masks.items()}
        save_file(
            tensors,
            os.fspath(path),
            metadata={
                "format": "prunekit-masks",
                "version": str(STATE_VERSION),
                "step": str(self.current_step),
            },
        )

    def load_masks(self, path: str | os.PathLike[str]) -> None:
        """Read masks written by :meth:`save_masks`; every op must be there with its
        weight's shape, or nothing changes and the error lists what is wrong."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        self._check_attached()
        try:
            loaded = load_file(os.fspath(path))
        except (OSError, SafetensorError) as exc:
            raise MaskFileError(f"cannot read masks from {os.fspath(path)!r}: {exc}") from None
        self._load_masks(self._check_masks(loaded, os.fspath(path)))

    def _check_masks(self, masks: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
        ops = self.ops
        problems = []
        missing = [n for n in ops if n not in masks]
        extra = [n for n in masks if n not in ops]
        if missing:
            problems.append(f"missing masks for {', '.join(map(repr, missing))}")
        if extra:
            problems.append(
                f"masks for ops this Pruner does not prune: {', '.join(map(repr, extra))}"
            )
        for name in ops:
            if name not in masks:
                continue
            mask = masks[name]
            shape = tuple(_tensor(ops[name], "weight").shape)
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                problems.append(
                    f"{name!r}: expected a bool mask, got "
                    f"{getattr(mask, 'dtype', type(mask).__name__)}"
                )
            elif tuple(mask.shape) != shape:
                problems.append(
                    f"{name!r}: mask shape {tuple(mask.shape)} does not match the "
                    f"weight's shape {shape}"
                )
        if problems:
            raise MaskFileError(f"{source}: " + "; ".join(problems) + ". Nothing was changed.")
        return {name: masks[name].to(_tensor(ops[name], "weight").device) for name in ops}

    def _load_masks(self, masks: Mapping[str, Tensor]) -> None:
        for group in self.groups:
            for name, module in group.ops.items():
                mask = masks[name]
                if hasattr(module, MASK_BUFFER):
                    getattr(module, MASK_BUFFER).copy_(mask)
                elif not bool(mask.all()):
                    self._attach(module, group.config, mask)
                self._zero_optimizer_state(module, mask)
        self._enforce()

    def __repr__(self) -> str:
        configs = ", ".join(f"{g.config.pattern}@{g.config.target_sparsity:g}" for g in self.groups)
        return f"Pruner({len(self.ops)} ops, configs=[{configs}], step={self.current_step})"


def _tensor(module: nn.Module, name: str) -> Tensor:
    """``module.<name>`` as a tensor (typed: nn.Module attributes are Tensor | Module)."""
    value = getattr(module, name)
    assert isinstance(value, Tensor), f"{type(module).__name__}.{name} is not a tensor"
    return value


def _check_free(name: str, module: nn.Module) -> None:
    """Refuse an op another tool has reparametrized, or that holds a ``weight_mask`` prunekit
    did not put there (a Pruner adopts the masks of a copy of a pruned model)."""
    if hasattr(module, "weight_orig"):
        raise PrunekitError(
            f"op {name!r} is pruned by torch.nn.utils.prune (it has weight_orig): call "
            "torch.nn.utils.prune.remove(module, 'weight') first, or leave it out of the config"
        )
    for buffer in (MASK_BUFFER, BIAS_MASK_BUFFER):
        if hasattr(module, buffer) and not carries_masks(module):
            raise PrunekitError(
                f"op {name!r} already has an attribute {buffer!r} that prunekit did not put "
                "there; remove it, or leave the op out of the config"
            )


def _output_channels_kept(module: nn.Module, mask: Tensor) -> Tensor:
    """Per output channel: does any of its weights stay? (ConvTranspose and transposed
    Linears, GPT-2's Conv1D: dim 1 is out.)"""
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    out_dim = 1 if transposed or is_transposed_linear(module) else 0
    other = tuple(d for d in range(mask.dim()) if d != out_dim)
    kept = mask.any(dim=other)
    if isinstance(module, nn.modules.conv._ConvTransposeNd) and module.groups > 1:
        kept = kept.repeat(module.groups)
    return kept


def _config_difference(
    saved: Sequence[Mapping[str, Any]], mine: Sequence[Mapping[str, Any]]
) -> str:
    if len(saved) != len(mine):
        return (
            f"state dict was made for {len(saved)} config(s), this Pruner has {len(mine)}; "
            "build the Pruner with the same configs to resume"
        )
    for index, (old, new) in enumerate(zip(saved, mine, strict=True)):
        for key in new:
            if old.get(key) != new[key]:
                return (
                    f"state dict was made with a different config {index}: {key} = "
                    f"{old.get(key)!r} there, {new[key]!r} here; build the Pruner with the "
                    "same configs to resume"
                )
    return "state dict configs differ from this Pruner's"


def prune(
    model: nn.Module,
    config: ConfigInput | Sequence[ConfigInput],
    *,
    example_inputs: Any = None,
    calibration_data: Any = None,
    calibration_device: Any = None,
) -> Pruner:
    """One-shot pruning: each config's criterion (magnitude by default) scores the weights,
    masks at each config's ``target_sparsity`` are applied at once. Returns the Pruner
    (``pruner.remove()`` makes the model plain again). ``example_inputs``: what the model is
    called with, for coupled configs (and ``pk.slim`` after). ``calibration_data``: model
    inputs (tensors, tuples or dicts) for calibration criteria (``wanda``, ``sparsegpt``)
    and OWL, run block by block (on ``calibration_device`` when given; docs/llm.md)."""
    pruner = Pruner(
        model,
        config,
        example_inputs=example_inputs,
        calibration_data=calibration_data,
        calibration_device=calibration_device,
    )
    pruner.prune_now()
    return pruner


__all__ = ["Pruner", "prune"]
