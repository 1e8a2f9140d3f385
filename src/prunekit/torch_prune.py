"""Any prunekit pattern as a ``torch.nn.utils.prune`` method, so torch's pruning code needs no
rewrite: ``apply(module, "weight", "4x1", 0.5)`` where ``prune.l1_unstructured(module,
"weight", 0.5)`` was.

:class:`PrunekitMethod` is a :class:`torch.nn.utils.prune.BasePruningMethod` whose
``compute_mask`` asks prunekit: ``get_pattern(config, {"weight": module})``, local scope, no
caps, scores from the config's criterion (``|w|`` by default), the current mask as
``pre_masks``. torch's own machinery does the rest: ``weight_orig`` + ``weight_mask`` + the
forward pre-hook, ``prune.remove``, ``prune.is_pruned``, iterative pruning through
``PruningContainer``, pickles (and copies, where torch allows them).

``amount`` follows torch: an int is a number of the pattern's blocks (``"1x1"``: weights,
as ``L1Unstructured``; ``"ln_structured"``: channels, as ``LnStructured``; ``"4x1"``: 4x1
tiles), a float in [0, 1] the fraction of what is left, rounded to whole blocks; each call
prunes that much of what the earlier ones left, and never revives a weight.
docs/torch-prune.md has the details and the differences from torch.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from prunekit.config import PruningConfig, get_pattern, load_config
from prunekit.errors import (
    ConfigError,
    ImpossibleTargetError,
    PruningWarning,
    ScoreError,
    UnsupportedModuleError,
)
from prunekit.masks.geometry import BlockLayout, blocks_at, limit_note, removed_blocks
from prunekit.masks.modules import carries_masks
from prunekit.masks.pattern import Pattern
from prunekit.plugins import CRITERIA

__all__ = ["ConfigOrSpec", "PrunekitMethod", "apply", "check_amount", "torch_config"]

ConfigOrSpec = str | Mapping[str, Any] | PruningConfig
# Patterns lay their blocks on a module's weight; torch's methods name it "weight" too.
WEIGHT = "weight"
# Without a module, a pattern is tried on a square Linear this wide: one whose blocks are
# single weights there (no tile fits in a single row) is an element pattern.
_PROBE_WIDTH = 8


def check_amount(amount: object) -> int | float:
    """``amount`` as torch's pruning methods accept it (an int >= 0 or a float in [0, 1]),
    refused with torch's error types: TypeError for a non-number, ValueError out of range.
    Checked before torch touches the module; a bool is refused (torch would take True as 1)."""
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(
            f"Invalid type for amount: {amount!r}. Must be int (blocks of the pattern to "
            "remove) or float (the fraction of what is left to remove)."
        )
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(
                f"amount={amount} should either be a float in the range [0, 1] or a "
                "non-negative integer"
            )
        return int(amount)
    value = float(amount)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(
            f"amount={amount} should either be a float in the range [0, 1] or a non-negative "
            "integer"
        )
    return value


def torch_config(config_or_spec: ConfigOrSpec) -> PruningConfig:
    """``config_or_spec`` as a validated config for pruning one tensor through torch: local
    scope and no per-op caps, since torch has neither and ``amount`` is the only count.

    The pattern, its options, the criterion and the seed are read; the target, schedule
    and op selection are not used. It is validated once, as every prunekit config is
    (unknown names get a did-you-mean), with scope and caps already set, so a pattern's own
    checks see what will run."""
    if isinstance(config_or_spec, str):  # a spec; load_config would read a str as a path
        data: dict[str, Any] = {"pattern": config_or_spec}
    elif isinstance(config_or_spec, PruningConfig):
        data = config_or_spec.model_dump()
    elif isinstance(config_or_spec, Mapping):
        data = dict(config_or_spec)
    else:
        raise TypeError(
            "config_or_spec: expected a pattern spec ('4x1', '2:4', 'ln_structured'), a "
            f"config dict or a prunekit.PruningConfig, got {type(config_or_spec).__name__}"
        )
    data.update(pruning_scope="local", min_sparsity_ratio_per_op=0.0, max_sparsity_ratio_per_op=1.0)
    validated = load_config(data)
    option_amount = validated.pattern_options.get("amount")
    if option_amount is not None:
        raise ConfigError(
            [
                f"amount: the config sets {option_amount!r}, but with prunekit.torch_prune "
                "amount is the pruning call's argument (torch's); leave it out of the config"
            ]
        )
    return validated


def _check_criterion(config: PruningConfig) -> None:
    """Refuse a criterion that reads gradients: torch's methods see the tensor alone."""
    if getattr(CRITERIA[config.criterion], "needs_grad", False):
        raise ConfigError(
            [
                f"criterion: {config.criterion!r} needs the weight's gradient, which "
                "torch.nn.utils.prune's methods never see; use one that needs none "
                "('magnitude', 'l2', 'random'), or prunekit.Pruner during training"
            ]
        )


def build_pattern(config: PruningConfig, module: nn.Module) -> Pattern:
    """The pattern of ``config`` on ``module``'s weight, or UnsupportedModuleError when it
    cannot prune it: an op the pattern would leave unpruned (N:M on a width M does not
    divide, ``indivisible="skip"``) is an error here, since the caller asked for pruning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PruningWarning)  # a skipped op is said below, as an error
        pattern = get_pattern(config, {WEIGHT: module})
    if WEIGHT in pattern.skipped:
        shape = tuple(pattern.weight_shapes[WEIGHT])
        raise UnsupportedModuleError(
            f"pattern {config.pattern!r} cannot prune the weight {shape} of this "
            f"{type(module).__name__}: {pattern.skipped[WEIGHT]}"
        )
    return pattern


def is_elementwise(pattern: Pattern) -> bool:
    """Whether every block of ``pattern`` is one weight and nothing depends on the weight's
    shape, so torch may hand it a flat slice ("unstructured"): one block per weight, and
    the pattern takes the Linear a slice is seen as."""
    layout = pattern.layouts.get(WEIGHT)
    return (
        layout is not None
        and layout.block_size == 1
        and layout.sizes is None
        and layout.num_blocks == math.prod(pattern.shapes[WEIGHT])
        and nn.Linear in pattern.module_types
    )


def _is_element_pattern(config: PruningConfig) -> bool:
    """Whether ``config``'s pattern removes single weights whatever the module, tried on a
    square Linear (where any tile or group spans several weights)."""
    square = nn.Linear(_PROBE_WIDTH, _PROBE_WIDTH, bias=False, device="meta")
    try:
        return is_elementwise(build_pattern(config, square))
    except UnsupportedModuleError:  # a pattern of convs' filters, channels, kernels
        return False


def _flat_pattern(config: PruningConfig, elements: int) -> Pattern:
    """``config``'s pattern on a one-row Linear of ``elements`` weights, on the meta device
    (no memory): the module a flat slice is seen as. Patterns need a module; an element
    pattern's choice does not depend on its shape."""
    return build_pattern(config, nn.Linear(elements, 1, bias=False, device="meta"))


def blocks_to_remove(amount: int | float, worth: float, left: int, what: str) -> int:
    """Blocks one call removes, counted as torch counts units: an int ``amount`` is that
    many, a float the fraction ``round(amount * worth)`` of what is left (Python's round,
    as torch); ``worth``: what is left (:func:`_worth_left`), ``left``: the blocks left.
    Asking for more blocks than are left is a ValueError (ImpossibleTargetError), as in
    torch."""
    new = amount if isinstance(amount, int) else round(amount * worth)
    if new > left:
        raise ImpossibleTargetError(
            f"amount={amount!r}: {what} has {left} blocks left to prune, fewer than the "
            f"{new} asked for"
        )
    return new


def _worth_left(layout: BlockLayout | None, left: int, alive: float) -> float:
    """What a float amount is a fraction of, in blocks. Blocks that lose all their weights
    (every built-in but N:M): the blocks left, as torch's LnStructured counts the channels
    left and L1Unstructured the weights left. Blocks that lose only part of their weights
    (N:M: N of M, a layout whose ``blocks_at(1)`` exceeds its blocks): the weights left
    (``alive``, a fraction of the weight) in blocks, ``blocks_at(alive)``, so that a float
    is a fraction of the weights left, as prunekit's target is of a fresh weight."""
    if layout is None or blocks_at(layout, 1.0) <= layout.num_blocks:
        return float(left)
    return blocks_at(layout, alive)


class PrunekitMethod(prune.BasePruningMethod):
    """A prunekit pattern as a torch pruning method: ``compute_mask`` asks prunekit.

    ``PRUNING_TYPE`` tells torch's ``PruningContainer`` what to hand ``compute_mask`` when
    a tensor is pruned again: "unstructured" for element patterns (``"1x1"``, the fillers),
    which get the flat still-unpruned weights, as torch's ``L1Unstructured``; "global"
    for every other pattern, which gets the whole weight and its current mask, because a
    slice with pruned channels cut out ("structured") would no longer have the geometry
    the blocks are laid on (INC's 2-D view, tiles, diagonals). The current mask goes to
    prunekit as ``pre_masks`` and ``amount`` counts what is left, so both paths prune as
    torch's iterative pruning does.

    ``module``: the module whose weight is pruned (``apply`` passes it); without one, only
    element patterns work, on any tensor (``prune.global_unstructured``).
    """

    PRUNING_TYPE: str = "global"

    def __init__(
        self, config_or_spec: ConfigOrSpec, amount: int | float, module: nn.Module | None = None
    ) -> None:
        self.amount = check_amount(amount)
        self.config = torch_config(config_or_spec)
        _check_criterion(self.config)
        self.pattern: Pattern | None = None
        if module is None:
            if not _is_element_pattern(self.config):
                raise TypeError(
                    f"pattern {self.config.pattern!r} lays blocks on a module's weight, so it "
                    "needs the module: use prunekit.torch_prune.apply(module, 'weight', ...); "
                    "without one (prune.global_unstructured) only patterns of single weights "
                    "work, such as '1x1'"
                )
            self.PRUNING_TYPE = "unstructured"
        else:
            self.pattern = build_pattern(self.config, module)
            self.PRUNING_TYPE = "unstructured" if is_elementwise(self.pattern) else "global"

    @classmethod
    def apply(  # type: ignore[override]
        cls,
        module: nn.Module,
        name: str,
        config_or_spec: ConfigOrSpec,
        amount: int | float,
        importance_scores: Tensor | None = None,
    ) -> prune.BasePruningMethod:
        """Prune ``module.<name>`` with the pattern, through torch's reparametrization.

        Everything that can be refused (the config, the amount, the module, an amount
        above what is left) is checked before torch takes the tensor's pruning hook off:
        torch does not put it back when a method raises while a tensor is pruned again.
        Returns the method, or the ``PruningContainer`` holding it (as torch's ``apply``).
        """
        if carries_masks(module):
            raise ValueError(
                f"this {type(module).__name__} carries a prunekit Pruner's mask (a "
                "'weight_mask' buffer of its own): call pruner.remove() or "
                "prunekit.strip_masks(model) first, then prune it through torch"
            )
        if name != WEIGHT:
            raise UnsupportedModuleError(
                f"prunekit patterns lay their blocks on a module's {WEIGHT!r}; got name "
                f"{name!r} (torch's own methods prune any tensor)"
            )
        if not isinstance(getattr(module, name, None), Tensor):
            raise UnsupportedModuleError(
                f"{type(module).__name__} has no tensor {name!r} for a pattern to prune"
            )
        method = cls(config_or_spec, amount, module)
        method.check_left(getattr(module, name + "_mask", None))
        applied: prune.BasePruningMethod = super().apply(  # type: ignore[no-untyped-call]
            module, name, method.config, method.amount, module, importance_scores=importance_scores
        )
        return applied

    def check_left(self, mask: Tensor | None) -> None:
        """Raise if ``amount`` asks for more blocks than ``mask`` (the tensor's current
        mask, None when it is not pruned yet) leaves, counted as ``compute_mask`` will."""
        if self.pattern is None:  # no module: torch hands over whatever it prunes
            return
        if mask is not None and self.PRUNING_TYPE == "unstructured":
            left = int((mask != 0).sum())  # torch hands over the still-unpruned weights
            what = f"pattern {self.config.pattern!r} on the {left} weights still unpruned"
            blocks_to_remove(self.amount, float(left), left, what)
        else:
            self.plan(self.pattern, _pre_mask(mask))

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        """The mask of ``t`` (the tensor, or its importance scores) on top of
        ``default_mask``: prunekit's masks for ``amount`` of what ``default_mask`` left,
        shaped and typed like ``default_mask`` (0/1 floats, as torch's)."""
        pattern = self.pattern
        if pattern is not None and tuple(t.shape) == pattern.weight_shapes[WEIGHT]:
            return self._masked(pattern, t, default_mask)
        if self.PRUNING_TYPE != "unstructured":
            expected = None if pattern is None else pattern.weight_shapes[WEIGHT]
            raise ScoreError(
                f"pattern {self.config.pattern!r}: got a tensor of shape {tuple(t.shape)}, "
                f"but the weight it was set up for has shape {expected}"
            )
        # An element pattern handed a flat slice: the still-unpruned weights, or every
        # weight of several tensors (global_unstructured).
        if t.numel() == 0:
            blocks_to_remove(self.amount, 0.0, 0, f"pattern {self.config.pattern!r} on no weight")
            return default_mask.clone(memory_format=torch.contiguous_format)
        flat = _flat_pattern(self.config, t.numel())
        mask = self._masked(flat, t.reshape(1, -1), default_mask.reshape(1, -1))
        return mask.reshape(t.shape)

    def _masked(self, pattern: Pattern, t: Tensor, default_mask: Tensor) -> Tensor:
        """prunekit's mask for ``t`` on ``pattern``'s op, pre-masked by ``default_mask``."""
        pre = _pre_mask(default_mask)
        target, new = self.plan(pattern, pre)
        if new == 0:  # as torch: nothing to prune leaves the mask as it is
            return default_mask.clone(memory_format=torch.contiguous_format)
        scores = self.scores(t)
        pre_masks = None if pre is None else {WEIGHT: pre}
        keep = pattern.get_masks({WEIGHT: scores}, target, pre_masks)[WEIGHT]
        if pre is not None:  # never revive, whatever a pattern does with pre_masks
            keep = keep & pre
        return keep.to(dtype=default_mask.dtype)

    def scores(self, t: Tensor) -> Tensor:
        """The config's criterion on ``t`` (``|t|`` for magnitude), with a generator seeded
        by ``config.seed`` so that a random criterion gives the same mask every run."""
        criterion = CRITERIA[self.config.criterion]
        generator = torch.Generator().manual_seed(self.config.seed)
        scores: Tensor = criterion(t, generator=generator)
        return scores

    def plan(self, pattern: Pattern, pre: Tensor | None) -> tuple[float, int]:
        """``(target, new)``: the prunekit target that makes ``pattern``'s op lose ``new``
        more blocks than ``pre`` (the current mask, True = keep) removed, and that count.

        The target is ``total / blocks_at(1)``, which local scope counts back to ``total``
        blocks exactly (``round(target * blocks)``); a pattern that counts its own way is
        refused rather than pruned by another amount than the one asked."""
        removed, new, worth = self.count(pattern, pre)
        total = removed + new
        target = total / worth
        if target >= 1.0:  # every block: prunekit's targets stay below 1, and round() gives it
            target = (total - 0.25) / worth
        if WEIGHT in pattern.layouts:
            counted = pattern.local_block_count(WEIGHT, target)
            if counted != total:
                raise ImpossibleTargetError(
                    f"pattern {self.config.pattern!r} counts its blocks its own way (target "
                    f"{target:g} gives {counted} blocks, not the {total} that "
                    f"amount={self.amount!r} needs), so it cannot prune by torch's amount; use "
                    "prunekit.get_pattern(config, modules).get_masks(scores, target)"
                )
        return target, new

    def count(self, pattern: Pattern, pre: Tensor | None) -> tuple[int, int, float]:
        """``(removed, new, worth)``: the blocks of ``pattern``'s op that ``pre`` removed,
        the blocks this call removes, and the whole op in the pattern's counting
        (``blocks_at(1)``). A pattern that overrides ``get_masks`` alone counts weights."""
        layout = pattern.layouts.get(WEIGHT)
        shape = pattern.weight_shapes[WEIGHT]
        elements = math.prod(shape)
        on = f"a weight of shape {shape}" if pattern is self.pattern else "the weights handed"
        what = f"pattern {self.config.pattern!r} on {on}"
        if layout is None:
            blocks, worth = elements, float(elements)
            removed = 0 if pre is None else int((~pre).sum())
        else:
            blocks, worth = layout.num_blocks, blocks_at(layout, 1.0)
            removed = 0 if pre is None else _removed(pattern, layout, pre)
            what += f" ({limit_note(layout)})"
        left = blocks - removed
        alive = 1.0 if pre is None else int(pre.sum()) / elements
        new = blocks_to_remove(self.amount, _worth_left(layout, left, alive), left, what)
        return removed, new, worth

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(pattern={self.config.pattern!r}, amount={self.amount!r}, "
            f"PRUNING_TYPE={self.PRUNING_TYPE!r})"
        )


def _pre_mask(mask: Tensor | None) -> Tensor | None:
    """torch's mask (0/1, any dtype) as prunekit's pre-mask (bool, True = keep); None when
    it removes nothing, so a first pruning is exactly prunekit's ``get_masks``."""
    if mask is None:
        return None
    keep = mask != 0
    return None if bool(keep.all()) else keep


def _removed(pattern: Pattern, layout: BlockLayout, pre: Tensor) -> int:
    """Blocks of the op's layout that ``pre`` already removed (in the layout's view: a
    transposed Linear's ``(out, in)``)."""
    view = pre.t() if WEIGHT in pattern.transposed else pre
    return int(removed_blocks(layout, view).sum())


def apply(
    module: nn.Module,
    name: str,
    config_or_spec: ConfigOrSpec,
    amount: int | float,
    *,
    importance_scores: Tensor | None = None,
) -> nn.Module:
    """Prune ``module.<name>`` with a prunekit pattern, as ``prune.l1_unstructured(module,
    name, amount)`` does with torch's: ``weight_orig``, ``weight_mask`` and a forward
    pre-hook, so ``prune.remove`` and ``prune.is_pruned`` work as usual.

    ``config_or_spec``: a pattern spec (``"4x1"``, ``"2:4"``, ``"filter"``,
    ``"ln_structured"``, a plugin's name) or a config dict / :class:`~prunekit.PruningConfig`
    with the pattern's options (``{"pattern": "ln_structured", "n": 1, "dim": 0}``) and a
    criterion that needs no gradient. ``amount``: an int is a number of the pattern's
    blocks, a float in [0, 1] the fraction of what is left. ``importance_scores``: scored
    by the criterion instead of the tensor, as in torch. Returns ``module``.
    """
    PrunekitMethod.apply(module, name, config_or_spec, amount, importance_scores)
    return module
