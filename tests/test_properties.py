"""Invariants every registered pattern keeps, built-in or plugin alike.

Parametrized over the registry itself (exact names, and each family's spec examples), so a
new pattern gets the whole battery for free: mask shape and dtype, determinism, exact counts
(local: ``round(target * blocks)`` whole blocks; global: the nearest whole blocks to
``round(target * elements)``), caps, and monotonicity with ``pre_masks``.
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from prunekit.masks.geometry import removed_blocks
from prunekit.masks.limits import caps_of, local_count
from prunekit.plugins import default_host


def every_spec() -> list[str]:
    """Every pattern whose units are blocks of one weight; those spanning several layers
    (``head``: q, k, v rows and output columns) have their own tests (test_slim.py)."""
    specs = []
    for entry in default_host().patterns.entries():
        if not entry.obj.couples_itself:
            specs.extend(entry.examples if entry.is_family else [entry.name])
    return specs


SPECS = every_spec()
# Patterns that leave ops unpruned say so (tests of that warning are elsewhere).
pytestmark = pytest.mark.filterwarnings("ignore::prunekit.PruningWarning")


def test_the_battery_covers_builtins_and_the_example_plugin() -> None:
    assert {"1x1", "4x1", "channelx1", "1xchannel", "block_diagonal"} <= set(SPECS)


KINDS = ("linear", "conv2d", "conv1d", "conv3d", "deconv")


def module_of(kind: str, inp: int, out: int, size: int) -> nn.Module:
    """A module of ``kind`` with ``inp`` inputs, ``out`` outputs; ``size``: a Linear's input
    width, a conv's kernel."""
    if kind == "linear":
        return nn.Linear(size, out)
    if kind == "conv1d":
        return nn.Conv1d(inp, out, min(size, 4))
    if kind == "conv2d":
        return nn.Conv2d(inp, out, min(size, 3))
    if kind == "conv3d":
        return nn.Conv3d(inp, out, min(size, 2))
    return nn.ConvTranspose2d(inp, out, min(size, 3))


def kinds_for(spec: str) -> tuple[str, ...]:
    """The module kinds pattern ``spec`` can prune (it refuses the others by name)."""
    found = []
    for kind in KINDS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", pk.PruningWarning)
                pk.get_pattern({"pattern": spec}, {"op": module_of(kind, 3, 4, 3)})
        except pk.UnsupportedModuleError:
            continue
        found.append(kind)
    return tuple(found)


APPLIES = {spec: kinds_for(spec) for spec in SPECS}


def test_every_pattern_applies_to_some_module() -> None:
    assert all(APPLIES.values()), [s for s, kinds in APPLIES.items() if not kinds]
    assert APPLIES["depth"] == ("conv3d",)
    assert "deconv" not in APPLIES["4x1"]


@st.composite
def models(draw: st.DrawFn, spec: str) -> dict[str, nn.Module]:
    """One to three modules the pattern ``spec`` applies to."""
    modules: dict[str, nn.Module] = {}
    for i in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(APPLIES[spec]))
        inp, out = draw(st.integers(1, 6)), draw(st.integers(1, 12))
        size = draw(st.integers(1, 24)) if kind == "linear" else draw(st.integers(1, 4))
        modules[f"{kind}{i}"] = module_of(kind, inp, out, size)
    return modules


@st.composite
def scores_for(draw: st.DrawFn, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    ties = draw(st.booleans())
    scores = {}
    for name, module in modules.items():
        values = torch.rand(module.weight.shape, generator=generator)
        scores[name] = (values * 3).round() if ties else values  # tie-heavy half the time
    return scores


def caps(pattern: pk.Pattern, name: str) -> tuple[int, int]:
    config = pattern.config
    return caps_of(
        pattern.layouts[name], config.min_sparsity_ratio_per_op, config.max_sparsity_ratio_per_op
    )


def removed_of(pattern: pk.Pattern, name: str, mask: torch.Tensor) -> tuple[int, bool]:
    """(blocks the pattern counts as removed, whether the removed elements are exactly what
    those blocks remove: nothing outside them, nothing half-done)."""
    layout = pattern.layouts[name]
    removed = removed_blocks(layout, mask)
    if layout.sizes is not None:
        expected = int(layout.sizes[removed].sum())
    else:
        expected = int(removed.sum()) * layout.block_size
    return int(removed.sum()), int((~mask).sum()) == expected


def most_local(spec: str) -> float:
    """The highest local target a pattern takes: N/M for N:M, else the max cap."""
    cls = pk.PATTERNS[spec]
    ceiling = cls.default_target(spec)
    return 0.98 if ceiling is None else ceiling


def surely_reachable(pattern: pk.Pattern) -> float:
    """A global sparsity of the pruned ops every score allows: each op's ``hi`` smallest
    blocks (ops left unpruned do not count)."""
    total = sum(math.prod(pattern.shapes[name]) for name in pattern.layouts)
    if not total:
        return 0.0
    removable = 0
    for name, layout in pattern.layouts.items():
        hi = caps(pattern, name)[1]
        if layout.sizes is None:
            removable += hi * layout.block_size
        else:
            removable += int(torch.sort(layout.sizes).values[:hi].sum())
    return removable / total


fractions = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 1.0])


@pytest.mark.parametrize("spec", SPECS)
@given(data=st.data())
def test_local_scope_invariants(spec: str, data: st.DataObject) -> None:
    modules = data.draw(models(spec))
    pattern = pk.get_pattern(
        {"pattern": spec, "pruning_scope": "local", "target_sparsity": 0.1}, modules
    )
    scores = data.draw(scores_for(modules))
    target = data.draw(fractions) * min(most_local(spec), 0.9)
    if not pattern.layouts and target > 0:  # e.g. every view narrower than an N:M group
        with pytest.raises(pk.ImpossibleTargetError, match="every op is left unpruned"):
            pattern.get_masks(scores, target)
        return
    masks = pattern.get_masks(scores, target)
    assert list(masks) == list(modules)
    again = pattern.get_masks({n: s.clone() for n, s in scores.items()}, target)
    for name, module in modules.items():
        assert masks[name].dtype == torch.bool
        assert masks[name].shape == module.weight.shape
        assert torch.equal(masks[name], again[name])  # deterministic
        if name in pattern.skipped:
            assert masks[name].all()
            continue
        lo, hi = caps(pattern, name)
        count, exact = removed_of(pattern, name, masks[name])
        assert exact
        assert count == local_count(pattern.local_block_count(name, target), lo, hi)


@pytest.mark.parametrize("spec", SPECS)
@given(data=st.data())
def test_global_scope_exact_total(spec: str, data: st.DataObject) -> None:
    modules = data.draw(models(spec))
    pattern = pk.get_pattern(
        {"pattern": spec, "pruning_scope": "global", "target_sparsity": 0.1}, modules
    )
    scores = data.draw(scores_for(modules))
    if not pattern.layouts:  # every op skipped (e.g. views narrower than an N:M group)
        with pytest.raises(pk.ImpossibleTargetError, match="every op is left unpruned"):
            pattern.get_masks(scores, data.draw(st.sampled_from([0.1, 0.2])))
        return
    target = data.draw(fractions) * min(surely_reachable(pattern), 0.97)
    masks = pattern.get_masks(scores, target)
    total = sum(math.prod(pattern.shapes[n]) for n in pattern.layouts)
    removed = sum(int((~masks[n]).sum()) for n in pattern.layouts)
    biggest = max(int(pattern.layouts[n].block_size) for n in pattern.layouts)
    assert abs(removed - round(target * total)) <= biggest / 2
    for name in pattern.layouts:
        count, exact = removed_of(pattern, name, masks[name])
        assert exact
        assert count <= caps(pattern, name)[1]


@pytest.mark.parametrize("spec", SPECS)
@given(data=st.data())
def test_global_targets_beyond_the_caps_are_refused(spec: str, data: st.DataObject) -> None:
    modules = data.draw(models(spec))
    pattern = pk.get_pattern(
        {"pattern": spec, "pruning_scope": "global", "target_sparsity": 0.1}, modules
    )
    reachable = pattern.reachable_sparsity()
    above = (reachable + 1.0) / 2 + 1e-6  # between the most the caps allow and 1
    scores = data.draw(scores_for(modules))
    refusal = r"short by|above N/M|above max_sparsity|every op is left unpruned"
    with pytest.raises(pk.ImpossibleTargetError, match=refusal):
        pattern.get_masks(scores, min(above, 0.999))


@pytest.mark.parametrize("spec", SPECS)
@given(data=st.data())
def test_pre_masks_are_monotone(spec: str, data: st.DataObject) -> None:
    modules = data.draw(models(spec))
    scope = data.draw(st.sampled_from(["local", "global"]))
    pattern = pk.get_pattern(
        {"pattern": spec, "pruning_scope": scope, "target_sparsity": 0.1}, modules
    )
    most = min(most_local(spec), 0.9) if scope == "local" else min(surely_reachable(pattern), 0.97)
    most = most if pattern.layouts else 0.0  # every op left unpruned: nothing to remove
    first_target = data.draw(st.sampled_from([0.1, 0.3, 0.5])) * most
    second_target = data.draw(st.sampled_from([0.5, 0.7, 1.0])) * most
    first = pattern.get_masks(data.draw(scores_for(modules)), first_target)
    second = pattern.get_masks(data.draw(scores_for(modules)), second_target, pre_masks=first)
    for name in modules:
        assert not (second[name] & ~first[name]).any()  # nothing removed comes back
        assert int((~second[name]).sum()) >= int((~first[name]).sum())


@pytest.mark.parametrize("spec", SPECS)
def test_bad_inputs_are_refused_before_anything_happens(spec: str) -> None:
    kind = "linear" if "linear" in APPLIES[spec] else APPLIES[spec][0]
    other = "conv2d" if "conv2d" in APPLIES[spec] else APPLIES[spec][-1]
    modules = {"fc": module_of(kind, 4, 8, 8), "conv": module_of(other, 4, 8, 3)}
    config = {"pattern": spec, "pruning_scope": "local", "target_sparsity": 0.1}
    pattern = pk.get_pattern(config, modules)
    good = {n: m.weight.detach().abs() for n, m in modules.items()}
    shape = tuple(good["fc"].shape)
    wrong = tuple(n + 1 for n in shape)
    with pytest.raises(pk.ScoreError, match="missing 'conv'"):
        pattern.get_masks({"fc": good["fc"]}, 0.2)
    with pytest.raises(pk.ScoreError, match="unexpected 'head'"):
        pattern.get_masks({**good, "head": torch.rand(2, 2)}, 0.2)
    with pytest.raises(pk.ScoreError, match=rf"scores\['fc'\]: shape {re.escape(str(wrong))} does"):
        pattern.get_masks({**good, "fc": torch.rand(wrong)}, 0.2)
    nan = good["conv"].clone()
    nan.view(-1)[0] = float("nan")
    with pytest.raises(pk.ScoreError, match=r"scores\['conv'\]: 1 NaN"):
        pattern.get_masks({**good, "conv": nan}, 0.2)
    with pytest.raises(pk.ScoreError, match="expected a float tensor"):
        pattern.get_masks({**good, "fc": torch.ones(shape, dtype=torch.int64)}, 0.2)
    with pytest.raises(pk.ScoreError, match=r"pre_masks\['fc'\]: expected a bool tensor"):
        pattern.get_masks(good, 0.2, pre_masks={"fc": torch.ones(shape)})
    with pytest.raises(ValueError, match=r"target_sparsity: 1.5 is not in \[0, 1\)"):
        pattern.get_masks(good, 1.5)
    assert all(torch.equal(good[n], modules[n].weight.detach().abs()) for n in modules)


def test_unsupported_module_names_the_op_and_the_types() -> None:
    with pytest.raises(
        pk.UnsupportedModuleError,
        match=r"cannot prune op 'emb' \(Embedding\): it supports Linear, Conv1d",
    ):
        pk.get_pattern({"pattern": "4x1"}, {"emb": nn.Embedding(10, 4)})
