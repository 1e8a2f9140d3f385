"""INC 3.7.1's pruning object (``BasicPruning``) on prunekit's ``Pruner``, in INC's order.

INC's basic pruner, per training step ``k`` (its ``global_step``, which only
``on_after_optimizer_step`` advances):

- ``on_step_begin``: once per step, if ``k`` is a pruning step, new masks from the
  criterion's scores at the schedule's target for ``k``, applied to the weights;
- ``on_before_optimizer_step``: gradient criteria update their scores from ``weight`` and
  ``weight.grad`` (snip_momentum: ``0.9 * score + |w * g|``);
- ``on_after_optimizer_step``: the masks are applied to the weights again, ``k += 1``.

So a gradient criterion's masks for step ``k + 1`` come from the scores of steps up to ``k``.
prunekit's ``Pruner.step()`` updates the scores and the masks in one call, so the configs
are split by what their criterion reads: criteria that read gradients step in
``on_before_optimizer_step`` of step ``k`` with the Pruner's step count at ``k + 1`` (the
same scores, weights and target as INC's masks at the start of step ``k + 1``, and the
gradients of removed weights are masked so the optimizer step leaves them at zero); the
others (magnitude) step in ``on_step_begin`` of step ``k`` at ``k``, reading the weights INC
reads there. INC's ``pattern_lock`` takes its masks from the zero weights at ``start_step``.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from prunekit.compat.inc_config import WeightPruningConfig, check_backend, pruner_entries
from prunekit.compat.inc_keys import (
    IncCompatWarning,
    Translation,
    UnsupportedIncKeyError,
    translate,
    user_stacklevel,
)
from prunekit.config.files import load_configs
from prunekit.config.model import PruningConfig
from prunekit.config.resolve import resolve
from prunekit.errors import ImpossibleTargetError, OpSelectionError
from prunekit.masks.modules import BIAS_MASK_BUFFER, MASK_BUFFER, carries_masks
from prunekit.masks.views import is_transposed_linear
from prunekit.training.ops import select_ops
from prunekit.training.pruner import Pruner
from prunekit.training.report import PruningReport

logger = logging.getLogger("prunekit.compat.inc")
# INC's ClassifierHeadSearcher: the last module of these types, when it is the model's last
# module (Dropout aside), is a classifier head and never pruned.
_HEAD_TYPES = ("Linear", "Conv2d")
_HEAD_SKIPPED = ("Dropout",)


@dataclass
class IncPruner:
    """One INC pruner as scripts read it: ``config`` is its entry of ``pruning_configs``
    with the inherited and default values (INC's ``pruner.config``), ``modules`` the ops it
    prunes (empty when it selects none, as in INC)."""

    index: int
    config: dict[str, Any]
    prunekit_config: PruningConfig
    modules: dict[str, nn.Module] = field(default_factory=dict)


@dataclass
class _Timed:
    """A prunekit Pruner, when INC's order calls it, and which INC pruner each of its
    configs is."""

    pruner: Pruner
    needs_grad: bool
    entries: list[int]
    locks: dict[int, int] = field(default_factory=dict)  # entry -> step its lock is taken


class BasicPruning:
    """INC's ``BasicPruning``: every pruner of ``config`` on ``model``, driven by INC's
    ``on_*`` calls (or, after :func:`prunekit.compat.inc.prepare_pruning`, by the model's
    forward and the optimizer's step). ``pruners`` are INC's pruners; ``prunekit_pruners``
    the prunekit Pruners doing the work; :meth:`report` what they removed."""

    def __init__(
        self,
        config: WeightPruningConfig,
        model: nn.Module,
        opt: torch.optim.Optimizer | None = None,
    ) -> None:
        if not isinstance(config, WeightPruningConfig):
            raise TypeError(
                f"expected a prunekit.compat.inc.WeightPruningConfig, got {type(config).__name__}"
            )
        self._model = model
        self.config = config
        self.pruners, self._timed = _build(config, model, opt)
        self.global_step = 0
        self._began = -1
        self._scored = -1
        self._handles: list[RemovableHandle] = []

    @property
    def model(self) -> nn.Module:
        """The model being pruned (INC keeps it as ``_model``)."""
        return self._model

    @property
    def prunekit_pruners(self) -> list[Pruner]:
        """The prunekit Pruners: one for the configs whose criterion reads gradients, one
        for the others (either may be absent)."""
        return [timed.pruner for timed in self._timed]

    # -- INC's callbacks ------------------------------------------------------------------
    def on_train_begin(self, dataloader: Any = None) -> None:
        """Nothing to set up: the Pruners were built with this object (as INC's pruners)."""

    def on_step_begin(self, local_step: int = 0) -> None:
        """Once per training step: pattern locks due now, then masks of the criteria that
        read only weights, at this step's target."""
        if self._began == self.global_step:
            return
        self._began = self.global_step
        for timed in self._timed:
            if not timed.needs_grad:
                self._take_locks(timed)
                timed.pruner.current_step = self.global_step
                timed.pruner.step()

    def on_before_optimizer_step(self) -> None:
        """Gradient criteria score this step's gradients and update their masks to the next
        step's target (INC does it at the next step's start, from the same scores); the
        removed weights' gradients are masked so that the optimizer leaves them at zero."""
        if self._scored == self.global_step:
            return
        self._scored = self.global_step
        for timed in self._timed:
            if timed.needs_grad:
                timed.pruner.current_step = self.global_step + 1
                timed.pruner.step()
                _mask_gradients(timed.pruner)

    def on_after_optimizer_step(self) -> None:
        """Removed weights back at zero (INC's ``mask_weights``) and the next step."""
        for timed in self._timed:
            _mask_weights(timed.pruner)
        self.global_step += 1

    def on_step_end(self) -> None:
        """Ends the step if the script stepped the optimizer without calling
        ``on_after_optimizer_step`` (the loop in INC's own CompressionManager docstring,
        under which INC never advances); otherwise nothing, as in INC."""
        if self._scored == self.global_step:
            self.on_after_optimizer_step()

    def on_epoch_begin(self, epoch: int) -> None:
        """Nothing, as in INC."""

    def on_epoch_end(self) -> None:
        """Nothing, as in INC."""

    def on_before_eval(self) -> None:
        """Nothing, as in INC."""

    def on_after_eval(self) -> None:
        """Nothing, as in INC."""

    def on_train_end(self) -> None:
        """Log the sparsity reached, as INC does; the masks stay on the model (call
        :meth:`remove` for a plain model)."""
        report = self.report()
        logger.info(
            "pruned ops: %d of %d weights removed (sparsity %.4f)",
            report.removed,
            report.elements,
            report.achieved,
        )

    # -- beyond INC -----------------------------------------------------------------------
    def report(self) -> PruningReport:
        """Every pruned op (``config`` is the INC pruner's index) and the totals."""
        ops = [
            replace(op, config=timed.entries[op.config])
            for timed in self._timed
            for op in timed.pruner.report().ops
        ]
        ops.sort(key=lambda op: op.config)  # stable: each Pruner's ops keep the model's order
        return PruningReport(step=self.global_step, ops=tuple(ops))

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """What INC's ``prepare_pruning`` does: the model's forward starts a step, the
        optimizer's step runs the before/after callbacks around itself (torch's optimizer
        hooks, so saving or copying the model and the optimizer keeps working)."""
        inner = _innermost(optimizer)
        self._handles += [
            model.register_forward_pre_hook(_StepBeginHook(self)),
            inner.register_step_pre_hook(_OptimizerHook(self, before=True)),
            inner.register_step_post_hook(_OptimizerHook(self, before=False)),
        ]

    def remove(self) -> nn.Module:
        """Take the hooks off and bake the masks into the weights: a plain model again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for timed in self._timed:
            timed.pruner.remove()
        return self._model

    def _take_locks(self, timed: _Timed) -> None:
        """INC's pattern_lock: at its start step, the masks become the weights' zeros."""
        due = [entry for entry, step in timed.locks.items() if step == self.global_step]
        if not due:
            return
        state = timed.pruner.state_dict()
        for entry in due:
            for name, module in self.pruners[entry].modules.items():
                state["masks"][name] = _tensor(module, "weight").detach() != 0
            del timed.locks[entry]
        timed.pruner.load_state_dict(state)

    def __repr__(self) -> str:
        return f"BasicPruning({len(self.pruners)} INC pruners, step={self.global_step})"


class _StepBeginHook:
    """The model's forward pre-hook of ``prepare_pruning``. A copy (deepcopy, pickle) of the
    model gets an inert hook: the copy is not the model being pruned."""

    def __init__(self, pruning: BasicPruning | None) -> None:
        self.pruning = pruning

    def __call__(self, module: nn.Module, args: Any) -> None:
        if self.pruning is not None:
            self.pruning.on_step_begin()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_StepBeginHook, (None,))


class _OptimizerHook:
    """The optimizer's step pre- or post-hook of ``prepare_pruning``."""

    def __init__(self, pruning: BasicPruning | None, *, before: bool) -> None:
        self.pruning = pruning
        self.before = before

    def __call__(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.pruning is None:
            return
        if self.before:
            self.pruning.on_before_optimizer_step()
        else:
            self.pruning.on_after_optimizer_step()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_inert_optimizer_hook, (self.before,))


def _inert_optimizer_hook(before: bool) -> _OptimizerHook:
    """The hook a copy of the optimizer gets: it drives nothing."""
    return _OptimizerHook(None, before=before)


def _innermost(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer whose ``step`` really runs: accelerate's ``AcceleratedOptimizer``
    and similar wrappers keep it as ``.optimizer``."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__} (as in "
            "INC's prepare_pruning)"
        )
    inner = optimizer
    while isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
        inner = inner.optimizer  # type: ignore[attr-defined]
    return inner


# -- building ---------------------------------------------------------------------------------
def _build(
    config: WeightPruningConfig, model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[list[IncPruner], list[_Timed]]:
    """INC's pruners of ``config`` on ``model``, and the prunekit Pruners that run them;
    every key that does not carry over warned about or refused before anything is built."""
    check_backend(config)
    entries = pruner_entries(config)
    translations = [translate(entry.config, entry.index) for entry in entries]
    _report_keys(translations)
    head = classifier_head(model)
    for translation in translations:
        if head is not None:
            excluded = list(translation.config.get("excluded_op_names", []))
            translation.config["excluded_op_names"] = [*excluded, head]  # as INC: a regex
    validated = load_configs([t.config for t in translations])
    pruners = [
        IncPruner(entry.index, entry.config, cfg)
        for entry, cfg in zip(entries, validated, strict=True)
    ]
    _select(model, pruners)
    timed = [
        _timed(model, pruners, translations, optimizer, needs_grad=flag) for flag in (False, True)
    ]
    return pruners, [t for t in timed if t is not None]


def _report_keys(translations: Sequence[Translation]) -> None:
    """One error listing every refused key of every entry, else one warning per ignored
    key, so a script learns about all of them at once."""
    errors = [error for t in translations for error in t.errors]
    if errors:
        raise UnsupportedIncKeyError([line for _, line in errors], [key for key, _ in errors])
    for translation in translations:
        for key, message in translation.warnings:
            warnings.warn(IncCompatWarning(key, message), stacklevel=user_stacklevel())


def classifier_head(model: nn.Module) -> str | None:
    """INC's ClassifierHeadSearcher: the last Linear or Conv2d when it is the model's last
    module (Dropout aside), e.g. BERT's ``classifier``. INC adds its name to every pruner's
    ``excluded_op_names``, a regular expression like the others (so a head ``fc`` also
    leaves out ``fc1``), and so does prunekit, to prune what INC pruned."""
    modules = [(n, m) for n, m in model.named_modules() if type(m).__name__ not in _HEAD_SKIPPED]
    candidates: list[str] = [n for n, m in modules if type(m).__name__ in _HEAD_TYPES]
    if not candidates or not modules or candidates[-1] != modules[-1][0]:
        return None
    return candidates[-1]


def _select(model: nn.Module, pruners: Sequence[IncPruner]) -> None:
    """Each pruner's ops (INC's parse_to_prune). A pruner that selects none is left out
    with a warning, as INC's 'one pruner hooks no layers'; an op two pruners select, or a
    module type prunekit's pattern cannot prune, is an error."""
    owner: dict[str, int] = {}
    unsupported: list[str] = []
    for pruner in pruners:
        try:
            with warnings.catch_warnings():  # the Pruner warns about these once, when built
                warnings.simplefilter("ignore")
                pruner.modules = select_ops(model, pruner.prunekit_config)
        except OpSelectionError as exc:
            _warn_empty(pruner, exc)
            continue
        unsupported += _unsupported_modules(pruner)
        for name in pruner.modules:
            if name in owner:
                raise OpSelectionError(
                    f"op {name!r} is selected by pruning_configs[{owner[name]}] and "
                    f"pruning_configs[{pruner.index}]; INC applied both pruners' masks to it, "
                    "prunekit gives each op one config: narrow op_names or add "
                    "excluded_op_names"
                )
            owner[name] = pruner.index
    if unsupported:
        raise UnsupportedIncKeyError(unsupported, ["pruning_op_types"] * len(unsupported))
    if not owner:
        raise OpSelectionError(
            "no pruner of this WeightPruningConfig selects an op of the model; check op_names, "
            "excluded_op_names and pruning_op_types (the warnings name each pruner)"
        )


def _warn_empty(pruner: IncPruner, error: OpSelectionError) -> None:
    """INC's 'one pruner hooks no layers', as a warning naming the entry."""
    warnings.warn(
        IncCompatWarning(
            "op_names",
            f"pruning_configs[{pruner.index}] selects no op, so it is left out (INC ran it as "
            f"a pruner of nothing: 'one pruner hooks no layers'): {error}",
        ),
        stacklevel=user_stacklevel(),
    )


def _unsupported_modules(pruner: IncPruner) -> list[str]:
    """Selected modules the pattern cannot lay its blocks on (INC prunes any module with a
    weight whose class name contains a pruning_op_types entry: embeddings, transposed
    convs ...); leaving them out would prune less than INC did."""
    pattern_cls = resolve(pruner.prunekit_config).pattern
    types = pattern_cls.module_types
    lines = []
    for name, module in pruner.modules.items():
        if isinstance(module, types) or (nn.Linear in types and is_transposed_linear(module)):
            continue
        lines.append(
            f"pruning_configs[{pruner.index}].pruning_op_types: "
            f"{pruner.prunekit_config.pruning_op_types} selects op {name!r} "
            f"({type(module).__name__}), which pattern {pruner.prunekit_config.pattern!r} "
            f"cannot prune (it prunes {', '.join(t.__name__ for t in types)}); leave the type "
            "out of pruning_op_types or the op out with excluded_op_names"
        )
    return lines


def _timed(
    model: nn.Module,
    pruners: Sequence[IncPruner],
    translations: Sequence[Translation],
    optimizer: torch.optim.Optimizer | None,
    *,
    needs_grad: bool,
) -> _Timed | None:
    """The Pruner for the selected pruners whose criterion reads gradients (or not)."""
    chosen = [p for p in pruners if p.modules and _reads_grad(p.prunekit_config) == needs_grad]
    if not chosen:
        return None
    configs = [p.prunekit_config for p in chosen]
    locks = {p.index: p.prunekit_config.start_step for p in chosen if translations[p.index].lock}
    entries = [p.index for p in chosen]
    try:
        pruner = Pruner(model, configs, optimizer=optimizer)
    except ImpossibleTargetError as exc:  # name the INC entry, not the Pruner's config
        message = re.sub(
            r"^config (\d+)", lambda m: f"pruning_configs[{entries[int(m[1])]}]", str(exc)
        )
        raise ImpossibleTargetError(message) from None
    return _Timed(pruner, needs_grad, entries, locks)


def _reads_grad(config: PruningConfig) -> bool:
    """Whether the config's criterion reads ``weight.grad`` (so it steps before the update)."""
    return bool(getattr(resolve(config).criterion, "needs_grad", False))


# -- masks between prunekit's steps ------------------------------------------------------------
def _mask_weights(pruner: Pruner) -> None:
    """Removed weights (and masked biases) to zero, as INC's ``mask_weights`` after every
    optimizer step."""
    with torch.no_grad():
        for module in pruner.ops.values():
            for name, buffer in (("weight", MASK_BUFFER), ("bias", BIAS_MASK_BUFFER)):
                mask = module._buffers.get(buffer)
                if carries_masks(module) and isinstance(mask, Tensor):
                    _tensor(module, name).mul_(mask)


def _mask_gradients(pruner: Pruner) -> None:
    """Gradients of removed weights to zero, for masks made after this step's backward."""
    with torch.no_grad():
        for module in pruner.ops.values():
            for name, buffer in (("weight", MASK_BUFFER), ("bias", BIAS_MASK_BUFFER)):
                mask = module._buffers.get(buffer)
                grad = getattr(module, name).grad if hasattr(module, name) else None
                if isinstance(mask, Tensor) and isinstance(grad, Tensor):
                    grad.mul_(mask)


def _tensor(module: nn.Module, name: str) -> Tensor:
    """``module.<name>`` as a tensor (nn.Module attributes are typed Tensor | Module)."""
    value = getattr(module, name)
    assert isinstance(value, Tensor), f"{type(module).__name__}.{name} is not a tensor"
    return value


__all__ = ["BasicPruning", "IncPruner", "classifier_head"]
