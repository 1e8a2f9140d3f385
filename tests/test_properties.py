"""Invariants every registered pattern keeps, built-in or plugin alike.

Parametrized over the registry itself (exact names, and each family's spec examples), so a
new pattern gets the whole battery for free: mask shape and dtype, determinism, exact counts
(local: ``round(target * blocks)`` whole blocks; global: the nearest whole blocks to
``round(target * elements)``), caps, and monotonicity with ``pre_masks``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from prunekit.plugins import default_host


def every_spec() -> list[str]:
    specs = []
    for entry in default_host().patterns.entries():
        specs.extend(entry.examples if entry.is_family else [entry.name])
    return specs


SPECS = every_spec()


def test_the_battery_covers_builtins_and_the_example_plugin() -> None:
    assert {"1x1", "4x1", "channelx1", "1xchannel", "block_diagonal"} <= set(SPECS)


@st.composite
def models(draw: st.DrawFn) -> dict[str, nn.Module]:
    modules: dict[str, nn.Module] = {}
    for i in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["linear", "linear", "conv2d", "conv1d", "conv3d", "deconv"]))
        inp, out = draw(st.integers(1, 6)), draw(st.integers(1, 12))
        if kind == "linear":
            modules[f"fc{i}"] = nn.Linear(draw(st.integers(1, 24)), out)
        elif kind == "conv1d":
            modules[f"conv{i}"] = nn.Conv1d(inp, out, draw(st.integers(1, 4)))
        elif kind == "conv2d":
            modules[f"conv{i}"] = nn.Conv2d(inp, out, draw(st.integers(1, 3)))
        elif kind == "conv3d":
            modules[f"conv{i}"] = nn.Conv3d(inp, out, draw(st.integers(1, 2)))
        else:
            modules[f"deconv{i}"] = nn.ConvTranspose2d(inp, out, draw(st.integers(1, 3)))
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


def build(spec: str, modules: dict[str, nn.Module], **fields: object) -> pk.Pattern | None:
    try:
        return pk.get_pattern({"pattern": spec, **fields}, modules)
    except pk.UnsupportedModuleError:
        return None


def removed_blocks(pattern: pk.Pattern, name: str, mask: torch.Tensor) -> tuple[int, bool]:
    """(blocks the pattern counts as removed, whether the removed elements are exactly what
    those blocks remove: nothing outside them, nothing half-done)."""
    layout = pattern.layouts[name]
    removed = pattern.removed_blocks(name, mask)
    if layout.sizes is not None:
        expected = int(layout.sizes[removed].sum())
    else:
        expected = int(removed.sum()) * layout.block_size
    return int(removed.sum()), int((~mask).sum()) == expected


targets = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 0.9])


@pytest.mark.parametrize("spec", SPECS)
@given(data=st.data())
def test_local_scope_invariants(spec: str, data: st.DataObject) -> None:
    modules = data.draw(models())
    pattern = build(spec, modules, pruning_scope="local", target_sparsity=0.1)
    if pattern is None:
        return
    scores = data.draw(scores_for(modules))
    target = data.draw(targets)
    try:
        masks = pattern.get_masks(scores, target)
    except pk.ImpossibleTargetError as error:  # N:M above N/M: refused, and says so
        assert "above" in str(error)
        return
    assert list(masks) == list(modules)
    again = pattern.get_masks({n: s.clone() for n, s in scores.items()}, target)
    for name, module in modules.items():
        assert masks[name].dtype == torch.bool
        assert masks[name].shape == module.weight.shape
        assert torch.equal(masks[name], again[name])  # deterministic
        if name in pattern.layouts:
            op = pattern._op_blocks(name, scores[name].float(), None, "mean")
            count, exact = removed_blocks(pattern, name, masks[name])
            assert exact
            assert count == pattern.local_block_count(name, op, target) <= op.hi
        elif name in pattern.skipped:
            assert masks[name].all()


@pytest.mark.parametrize("spec", SPECS)
@given(data=st.data())
def test_global_scope_exact_total_or_clear_error(spec: str, data: st.DataObject) -> None:
    modules = data.draw(models())
    pattern = build(spec, modules, pruning_scope="global", target_sparsity=0.1)
    if pattern is None or not pattern.layouts:
        return
    scores = data.draw(scores_for(modules))
    target = data.draw(targets)
    try:
        masks = pattern.get_masks(scores, target)
    except pk.ImpossibleTargetError as error:
        assert "short by" in str(error) or "above N/M" in str(error)
        return
    total = sum(pattern.layout_elements(n) for n in pattern.layouts)
    removed = sum(int((~masks[n]).sum()) for n in pattern.layouts)
    biggest = max(int(pattern.layouts[n].block_size) for n in pattern.layouts)
    assert abs(removed - round(target * total)) <= biggest / 2
    for name in pattern.layouts:
        count, exact = removed_blocks(pattern, name, masks[name])
        assert exact
        assert count <= pattern.block_caps(name, 0)[1]


@pytest.mark.parametrize("spec", SPECS)
@given(data=st.data())
def test_pre_masks_are_monotone(spec: str, data: st.DataObject) -> None:
    modules = data.draw(models())
    scope = data.draw(st.sampled_from(["local", "global"]))
    pattern = build(spec, modules, pruning_scope=scope, target_sparsity=0.1)
    if pattern is None:
        return
    first_target = data.draw(st.sampled_from([0.1, 0.3, 0.5]))
    second_target = data.draw(st.sampled_from([0.5, 0.7, 0.9]))
    try:
        first = pattern.get_masks(data.draw(scores_for(modules)), first_target)
        second = pattern.get_masks(data.draw(scores_for(modules)), second_target, pre_masks=first)
    except pk.ImpossibleTargetError:
        return
    for name in modules:
        assert not (second[name] & ~first[name]).any()  # nothing removed comes back
        assert int((~second[name]).sum()) >= int((~first[name]).sum())


@pytest.mark.parametrize("spec", SPECS)
def test_bad_inputs_are_refused_before_anything_happens(spec: str) -> None:
    modules = {"fc": nn.Linear(8, 8), "conv": nn.Conv2d(4, 8, 3)}
    pattern = build(spec, modules, pruning_scope="local", target_sparsity=0.1)
    if pattern is None:
        return
    good = {n: m.weight.detach().abs() for n, m in modules.items()}
    with pytest.raises(pk.ScoreError, match="missing 'conv'"):
        pattern.get_masks({"fc": good["fc"]}, 0.2)
    with pytest.raises(pk.ScoreError, match="unexpected 'head'"):
        pattern.get_masks({**good, "head": torch.rand(2, 2)}, 0.2)
    with pytest.raises(pk.ScoreError, match=r"scores\['fc'\]: shape \(8, 4\) does not match"):
        pattern.get_masks({**good, "fc": torch.rand(8, 4)}, 0.2)
    nan = good["conv"].clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(pk.ScoreError, match=r"scores\['conv'\]: 1 NaN"):
        pattern.get_masks({**good, "conv": nan}, 0.2)
    with pytest.raises(pk.ScoreError, match="expected a float tensor"):
        pattern.get_masks({**good, "fc": torch.ones(8, 8, dtype=torch.int64)}, 0.2)
    with pytest.raises(pk.ScoreError, match=r"pre_masks\['fc'\]: expected a bool tensor"):
        pattern.get_masks(good, 0.2, pre_masks={"fc": torch.ones(8, 8)})
    with pytest.raises(ValueError, match=r"target_sparsity: 1.5 is not in \[0, 1\)"):
        pattern.get_masks(good, 1.5)
    assert all(torch.equal(good[n], modules[n].weight.detach().abs()) for n in modules)


def test_unsupported_module_names_the_op_and_the_types() -> None:
    with pytest.raises(
        pk.UnsupportedModuleError,
        match=r"cannot prune op 'emb' \(Embedding\): it supports Linear, Conv1d",
    ):
        pk.get_pattern({"pattern": "4x1"}, {"emb": nn.Embedding(10, 4)})
