"""The contract every pattern keeps, as checks a plugin's own test suite runs.

A plugin author installs prunekit and calls :func:`check_pattern` from a test::

    from prunekit.testing import check_pattern

    def test_foo_keeps_prunekit_s_contract():
        check_pattern("foo")                  # or check_pattern("foo", width=4)

It builds the pattern on real modules of every kind it says it supports (Linear, Conv1d/2d/3d,
ConvTranspose, a transposed Linear like GPT-2's Conv1D), at several targets, caps, scopes and
score sets (random and tie-heavy), and fails with an ``AssertionError`` that says which case
broke which rule:

* **shapes**: one bool mask per op, shaped like its weight; the inputs are not modified;
* **determinism**: the same inputs give the same masks;
* **exact counts**: under local scope each op removes the count its target asks (for a
  layout-based pattern, ``round(target * blocks)`` whole blocks; for any pattern,
  ``round(target * elements)`` within one block); under global scope the total lands within
  half the largest block of ``round(target * elements)``;
* **caps**: no op below ``min_sparsity_ratio_per_op`` or above ``max_sparsity_ratio_per_op``
  (within one block);
* **pre-masks**: what a pre-mask removed stays removed, and counts;
* **errors**: bad scores are refused with :class:`~prunekit.ScoreError` naming the op, a
  global target above what the caps allow with :class:`~prunekit.ImpossibleTargetError`.

A pattern that overrides ``get_masks`` alone owes the same; it says how many elements it
removes together through :meth:`~prunekit.Pattern.block_elements` (default 1: single weights),
which sets the "within one block" above. No mock, no private name: the checks go through
``prunekit.get_pattern`` and ``get_masks`` as a user would.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.config.resolve import get_pattern
from prunekit.errors import (
    ImpossibleTargetError,
    PruningWarning,
    ScoreError,
    UnsupportedModuleError,
)
from prunekit.masks.geometry import removed_blocks
from prunekit.masks.limits import caps_of, local_count
from prunekit.masks.pattern import Pattern
from prunekit.plugins.default import PATTERNS

__all__ = ["Conv1D", "check_pattern", "contract_modules"]


class Conv1D(nn.Module):
    """A Linear whose weight is stored ``(in, out)``, as Hugging Face's ``Conv1D`` (GPT-2):
    the transposed Linear every pattern must handle like a Linear."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(
            *x.shape[:-1], self.nf
        )


def contract_modules() -> dict[str, Callable[[], nn.Module]]:
    """The modules the contract is checked on, by kind (small, with shapes that divide and
    shapes that do not divide common blocks)."""
    return {
        "linear": lambda: nn.Linear(24, 16),
        "linear-odd": lambda: nn.Linear(13, 7),
        "conv1d": lambda: nn.Conv1d(4, 8, 5),
        "conv2d": lambda: nn.Conv2d(4, 8, 3),
        "conv2d-odd": lambda: nn.Conv2d(3, 6, 3),
        "conv3d": lambda: nn.Conv3d(2, 4, 3),
        "conv_transpose2d": lambda: nn.ConvTranspose2d(4, 6, 3),
        "conv1d-transposed-linear": lambda: Conv1D(16, 24),
    }


@dataclass(frozen=True)
class _Case:
    scope: str
    caps: tuple[float, float]
    target: float
    ties: bool

    def __str__(self) -> str:
        return (
            f"{self.scope} scope, target {self.target:g}, caps {self.caps}, "
            f"{'tie-heavy' if self.ties else 'random'} scores"
        )


def check_pattern(spec: str, **options: Any) -> None:
    """Check that pattern ``spec`` (with its ``options``, given flat as in a config) keeps
    prunekit's contract on every module kind it supports; raise ``AssertionError`` naming
    the case and the rule it broke."""
    assert spec in PATTERNS, f"pattern {spec!r} is not registered (is the plugin installed?)"
    assert not PATTERNS[spec].couples_itself, (
        f"pattern {spec!r} removes units spanning several layers (couples_itself): this "
        "battery checks blocks of one weight; test its units on a model"
    )
    modules = _supported(spec, options)
    assert modules, f"pattern {spec!r} prunes none of: {', '.join(contract_modules())}"
    _check_bad_inputs(spec, options, modules)
    for case in _cases(spec):
        _check_case(spec, options, modules, case)
    if PATTERNS[spec].uses_scores:
        _check_global_order(spec, options, modules)


def _supported(spec: str, options: Mapping[str, Any]) -> dict[str, nn.Module]:
    """One module of every kind the pattern prunes (the others it must refuse by name)."""
    found: dict[str, nn.Module] = {}
    for kind, make in contract_modules().items():
        torch.manual_seed(len(found))
        module = make()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PruningWarning)
                get_pattern({"pattern": spec, **options}, {kind: module})
        except UnsupportedModuleError as error:
            assert kind in str(error), f"{spec}: refusing {kind} must name the op: {error}"
            continue
        found[kind] = module
    return found


def _cases(spec: str) -> Iterator[_Case]:
    ceiling = PATTERNS[spec].default_target(spec)
    most = 0.9 if ceiling is None else ceiling
    for scope in ("local", "global"):
        for caps in ((0.0, 0.98), (0.2, 0.7)):
            for fraction in (0.0, 0.3, 0.6, 1.0):
                target = round(min(most, caps[1]) * fraction, 6)
                for ties in (False, True):
                    yield _Case(scope, caps, target, ties)


def _scores(modules: Mapping[str, nn.Module], ties: bool, seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    scores = {}
    for name, module in modules.items():
        weight = module.weight
        assert isinstance(weight, Tensor)
        values = torch.rand(weight.shape, generator=generator)
        scores[name] = (values * 4).round() if ties else values
    return scores


def _build(
    spec: str, options: Mapping[str, Any], modules: Mapping[str, nn.Module], case: _Case
) -> Pattern:
    config = {
        "pattern": spec,
        "pruning_scope": case.scope,
        "min_sparsity_ratio_per_op": case.caps[0],
        "max_sparsity_ratio_per_op": case.caps[1],
        "target_sparsity": min(case.target, case.caps[1]),
        **options,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PruningWarning)
        return get_pattern(config, modules)


def _check_case(
    spec: str, options: Mapping[str, Any], modules: Mapping[str, nn.Module], case: _Case
) -> None:
    where = f"pattern {spec!r}, {case}"
    pattern = _build(spec, options, modules, case)
    scores = _scores(modules, case.ties, seed=int(case.target * 1000) + case.ties)
    given = {n: s.clone() for n, s in scores.items()}
    target = case.target
    try:
        masks = pattern.get_masks(scores, target)
    except ImpossibleTargetError as error:
        # Refused with a reason: a global target above what the ops allow (partial edge
        # blocks can make it so), or nothing left to prune.
        partial = any(layout.sizes is not None for layout in pattern.layouts.values())
        beyond = target > pattern.reachable_sparsity() or not pattern.layouts
        assert case.scope == "global" or not pattern.layouts, f"{where}: refused: {error}"
        assert beyond or partial, f"{where}: refused a reachable target: {error}"
        return
    _check_shapes(where, pattern, modules, masks)
    assert all(torch.equal(given[n], scores[n]) for n in scores), f"{where}: scores modified"
    again = pattern.get_masks({n: s.clone() for n, s in scores.items()}, target)
    for name in masks:
        assert torch.equal(masks[name], again[name]), f"{where}: op {name!r} not deterministic"
    _check_counts(where, pattern, masks, target)
    _check_pre_masks(where, pattern, masks, target)


def _check_shapes(
    where: str, pattern: Pattern, modules: Mapping[str, nn.Module], masks: Mapping[str, Tensor]
) -> None:
    assert list(masks) == list(modules), f"{where}: masks for {list(masks)}, ops {list(modules)}"
    for name, module in modules.items():
        weight = module.weight
        assert isinstance(weight, Tensor)
        mask = masks[name]
        assert mask.dtype == torch.bool, f"{where}: op {name!r} mask is {mask.dtype}, not bool"
        assert mask.shape == weight.shape, (
            f"{where}: op {name!r} mask {tuple(mask.shape)} is not shaped like its weight "
            f"{tuple(weight.shape)}"
        )


def _check_counts(where: str, pattern: Pattern, masks: Mapping[str, Tensor], target: float) -> None:
    """Caps per op (within one block), then the scope's own count rule."""
    config = pattern.config
    for name in pattern.skipped:
        assert bool(masks[name].all()), f"{where}: op {name!r} was skipped but lost weights"
    pruned = [n for n in masks if n not in pattern.skipped]
    removed = {n: int((~masks[n]).sum()) for n in pruned}
    for name in pruned:
        _check_caps(where, pattern, name, masks[name])
        if config.pruning_scope == "local":
            _check_local(where, pattern, name, masks[name], target)
    if config.pruning_scope == "global" and pruned:
        total = sum(masks[n].numel() for n in pruned)
        asked = round(target * total)
        if asked <= sum(_least(pattern, n, masks[n].numel()) for n in pruned):
            return  # the min caps decide the total: each op at its own, checked above
        got, grain = sum(removed.values()), max(pattern.block_elements(n) for n in pruned)
        assert abs(got - asked) <= grain, (
            f"{where}: removed {got} of {total} weights, the target asks {asked} (within {grain})"
        )


def _check_caps(where: str, pattern: Pattern, name: str, mask: Tensor) -> None:
    """Op ``name`` within its caps: in blocks for a layout-based pattern (caps are counted in
    whole blocks), else in elements within one of the pattern's blocks."""
    config = pattern.config
    low, high = config.min_sparsity_ratio_per_op, config.max_sparsity_ratio_per_op
    layout = pattern.layouts.get(name)
    if layout is not None:
        lo, hi = caps_of(layout, low, high)
        removed = int(
            removed_blocks(layout, mask.t() if name in pattern.transposed else mask).sum()
        )
        assert lo <= removed <= hi, (
            f"{where}: op {name!r} removed {removed} blocks, its caps allow {lo} to {hi}"
        )
        return
    elements, step, lost = mask.numel(), pattern.block_elements(name), int((~mask).sum())
    most, least = math.floor(high * elements + 1e-9), math.ceil(low * elements - 1e-9)
    assert least - step < lost < most + step, (
        f"{where}: op {name!r} lost {lost} of {elements}, outside its caps [{low}, {high}]"
    )


def _least(pattern: Pattern, name: str, elements: int) -> int:
    """The most elements the min cap can make op ``name`` remove (its ``lo`` blocks at their
    nominal size, or the cap's share within one of its blocks)."""
    low = pattern.config.min_sparsity_ratio_per_op
    layout = pattern.layouts.get(name)
    if layout is None:
        return math.ceil(low * elements - 1e-9) + pattern.block_elements(name)
    lo = caps_of(layout, low, pattern.config.max_sparsity_ratio_per_op)[0]
    return lo * layout.block_size


def _check_local(where: str, pattern: Pattern, name: str, mask: Tensor, target: float) -> None:
    """Local scope: the op removes what its own target asks, in whole blocks."""
    layout = pattern.layouts.get(name)
    lost = int((~mask).sum())
    config = pattern.config
    low, high = config.min_sparsity_ratio_per_op, config.max_sparsity_ratio_per_op
    if layout is None:  # a get_masks-only pattern: within one of its blocks
        elements = mask.numel()
        wanted = min(
            max(round(target * elements), math.ceil(low * elements - 1e-9)),
            math.floor(high * elements + 1e-9),
        )
        assert abs(lost - wanted) <= pattern.block_elements(name), (
            f"{where}: op {name!r} lost {lost} of {elements}, its target asks {wanted}"
        )
        return
    blocks = removed_blocks(layout, mask.t() if name in pattern.transposed else mask)
    sizes = layout.sizes
    whole = int(sizes[blocks].sum()) if sizes is not None else int(blocks.sum()) * layout.block_size
    assert whole == lost, f"{where}: op {name!r} lost {lost} weights, not whole blocks ({whole})"
    lo, hi = caps_of(layout, low, high)
    wanted = local_count(pattern.local_block_count(name, target), lo, hi)
    assert int(blocks.sum()) == wanted, (
        f"{where}: op {name!r} removed {int(blocks.sum())} blocks, its target asks {wanted}"
    )


def _check_pre_masks(
    where: str, pattern: Pattern, masks: Mapping[str, Tensor], target: float
) -> None:
    """A later, higher target with these masks as pre-masks revives nothing."""
    higher = min(target + (1.0 - target) / 3, pattern.reachable_sparsity(), 0.97)
    ceiling = type(pattern).default_target(pattern.config.pattern)
    higher = max(min(higher, ceiling) if ceiling is not None else higher, target)
    generator = torch.Generator().manual_seed(7)
    fresh = {n: torch.rand(m.shape, generator=generator) for n, m in masks.items()}
    try:
        later = pattern.get_masks(fresh, higher, pre_masks=dict(masks))
    except ImpossibleTargetError:
        return  # what pre-masks removed can make a global target unreachable: refused
    for name, mask in masks.items():
        revived = later[name] & ~mask
        assert not bool(revived.any()), f"{where}: op {name!r} revived pre-removed weights"


def _check_global_order(
    spec: str, options: Mapping[str, Any], modules: Mapping[str, nn.Module]
) -> None:
    """Global scope compares scores across ops: two copies of one module, one scoring far
    below the other, and a target the low one can meet alone: the high one loses nothing."""
    kind, module = next(iter(modules.items()))
    pair = {f"{kind}-low": module, f"{kind}-high": copy.deepcopy(module)}
    config = {"pattern": spec, "pruning_scope": "global", "target_sparsity": 0.25, **options}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PruningWarning)
        pattern = get_pattern(config, pair)
    layouts = type(pattern).layout is not Pattern.layout
    if layouts and (len(pattern.layouts) < 2 or pattern.reachable_sparsity() < 0.5):
        return  # skipped, or too few blocks for the low op to meet the target alone
    generator = torch.Generator().manual_seed(3)
    shape = tuple(pattern.weight_shapes[f"{kind}-low"])
    scores = {
        f"{kind}-low": torch.rand(shape, generator=generator) * 0.1,
        f"{kind}-high": 0.9 + torch.rand(shape, generator=generator) * 0.1,
    }
    masks = pattern.get_masks(scores, 0.25)
    lost_high = int((~masks[f"{kind}-high"]).sum())
    assert lost_high <= pattern.block_elements(f"{kind}-high"), (
        f"pattern {spec!r}, global scope: the op whose scores are all higher lost {lost_high} "
        "weights while the other could meet the target alone (global scope compares scores "
        "across ops)"
    )


def _check_bad_inputs(
    spec: str, options: Mapping[str, Any], modules: Mapping[str, nn.Module]
) -> None:
    """Bad scores are refused, naming the op, before anything happens."""
    ceiling = PATTERNS[spec].default_target(spec)
    target = 0.3 if ceiling is None else min(0.3, ceiling)
    pattern = _build(spec, options, modules, _Case("local", (0.0, 0.98), target, False))
    good = _scores(modules, False, 0)
    first = next(iter(modules))
    bad: list[tuple[dict[str, Tensor], str]] = [
        ({n: s for n, s in good.items() if n != first}, f"missing {first!r}"),
        ({**good, first: good[first].flatten()[:1]}, f"scores[{first!r}]: shape"),
        ({**good, first: torch.full_like(good[first], float("nan"))}, f"scores[{first!r}]"),
    ]
    for scores, message in bad:
        try:
            pattern.get_masks(scores, target)
        except ScoreError as error:
            assert message in str(error), f"pattern {spec!r}: {message!r} not in {error}"
            continue
        raise AssertionError(f"pattern {spec!r}: bad scores ({message}) were not refused")
