"""Exact masks of the NxM family on hand-made scores, on real Linear and Conv modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from conftest import magnitude_scores, prunable
from prunekit.masks.views import from_2d, to_2d


def linear(out: int, inp: int) -> nn.Linear:
    return nn.Linear(inp, out, bias=False)


def test_4x1_local_removes_lowest_vertical_tiles_exactly() -> None:
    fc = linear(8, 2)
    # Column 0: tiles (rows 0-3) mean 1, (rows 4-7) mean 5; column 1: mean 3 and mean 2.
    scores = torch.tensor(
        [[1, 3], [1, 3], [1, 3], [1, 3], [5, 2], [5, 2], [5, 2], [5, 2]], dtype=torch.float32
    )
    pattern = pk.get_pattern({"pattern": "4x1", "pruning_scope": "local"}, {"fc": fc})
    mask = pattern.get_masks({"fc": scores}, 0.5)["fc"]
    expected = torch.tensor([[0, 1]] * 4 + [[1, 0]] * 4, dtype=torch.bool)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, expected)


def test_1x1_is_unstructured_with_ties_to_lower_index() -> None:
    fc = linear(2, 3)
    scores = torch.tensor([[2.0, 1.0, 1.0], [1.0, 0.0, 3.0]])
    pattern = pk.get_pattern({"pattern": "1x1", "pruning_scope": "local"}, {"fc": fc})
    mask = pattern.get_masks({"fc": scores}, 0.5)["fc"]  # round(3.0) = 3 removed
    assert mask.tolist() == [[True, False, False], [True, False, True]]


def test_channelx1_removes_whole_columns_and_1xchannel_whole_rows() -> None:
    fc = linear(3, 4)
    scores = torch.tensor([[1.0, 9, 2, 8], [1, 9, 2, 8], [7, 0, 7, 7]])
    col = pk.get_pattern({"pattern": "channelx1", "pruning_scope": "local"}, {"fc": fc})
    # Column means: 3, 6, 3.67, 7.67 -> the two lowest are columns 0 and 2.
    assert col.get_masks({"fc": scores}, 0.5)["fc"].tolist() == [[False, True, False, True]] * 3
    row = pk.get_pattern({"pattern": "1xchannel", "pruning_scope": "local"}, {"fc": fc})
    # Row means: 5, 5, 5.25 -> round(1.5) = 2 rows go: rows 0 and 1 (tie -> lower index).
    assert row.get_masks({"fc": scores}, 0.5)["fc"].tolist() == [
        [False] * 4,
        [False] * 4,
        [True] * 4,
    ]


def test_conv_view_puts_input_channel_fastest() -> None:
    conv = nn.Conv2d(2, 4, kernel_size=(1, 2), bias=False)  # weight (4, 2, 1, 2)
    weight_like = torch.arange(16, dtype=torch.float32).reshape(4, 2, 1, 2)
    view = to_2d(weight_like)
    # INC: permute (0, 2, 3, 1) then reshape -> columns ordered (kh, kw, in).
    assert view.shape == (4, 4)
    assert view[0].tolist() == [0.0, 2.0, 1.0, 3.0]
    assert torch.equal(from_2d(view, weight_like.shape), weight_like)
    # 1x2 blocks pair the two input channels at one kernel position.
    scores = torch.ones(4, 2, 1, 2)
    scores[:, :, 0, 1] = 0.0  # kernel column 1, both input channels: the low block
    pattern = pk.get_pattern({"pattern": "1x2", "pruning_scope": "local"}, {"c": conv})
    mask = pattern.get_masks({"c": scores}, 0.5)["c"]
    assert torch.equal(mask, scores.bool())


def test_conv1d_and_conv3d_views_round_trip() -> None:
    for shape in [(4, 3, 5), (4, 3, 2, 2, 2)]:
        t = torch.randn(shape)
        assert torch.equal(from_2d(to_2d(t), t.shape), t)
        assert to_2d(t).shape == (4, t.numel() // 4)


def test_global_scope_compares_blocks_across_layers(mlp: nn.Sequential) -> None:
    modules = prunable(mlp)
    scores = {
        name: torch.full_like(m.weight, float(i)) for i, (name, m) in enumerate(modules.items())
    }
    pattern = pk.get_pattern({"pattern": "1x1", "target_sparsity": 0.5}, modules)
    masks = pattern.get_masks(scores, 0.5)
    total = sum(m.weight.numel() for m in modules.values())  # 192 + 128 + 32 = 352
    assert sum(int((~mask).sum()) for mask in masks.values()) == round(0.5 * total)
    # The lowest-scoring layer goes first, up to its 0.98 cap (188 of 192), then the next.
    assert int((~masks["0"]).sum()) == 176 and masks["2"].all() and masks["4"].all()


def test_global_caps_move_the_budget_to_other_layers(mlp: nn.Sequential) -> None:
    modules = prunable(mlp)
    scores = {
        name: torch.full_like(m.weight, float(i)) for i, (name, m) in enumerate(modules.items())
    }
    config = {"pattern": "1x1", "target_sparsity": 0.7, "max_sparsity_ratio_per_op": 0.75}
    masks = pk.get_pattern(config, modules).get_masks(scores, 0.7)
    removed = {name: int((~m).sum()) for name, m in masks.items()}
    assert removed == {"0": 144, "2": 96, "4": 6}  # 192*.75, 128*.75, rest: 246 - 240
    assert sum(removed.values()) == round(0.7 * 352)


def test_min_cap_brings_a_layer_up(mlp: nn.Sequential) -> None:
    modules = prunable(mlp)
    scores = {
        name: torch.full_like(m.weight, float(i)) for i, (name, m) in enumerate(modules.items())
    }
    config = {
        "pattern": "1x1",
        "target_sparsity": 0.2,
        "min_sparsity_ratio_per_op": 0.1,
        "pruning_scope": "global",
    }
    masks = pk.get_pattern(config, modules).get_masks(scores, 0.2)
    removed = {name: int((~m).sum()) for name, m in masks.items()}
    # round(0.2 * 352) = 70: the lowest layer takes what the mins leave, ceil(0.1 * 128) = 13
    # and ceil(0.1 * 32) = 4 are forced on the others.
    assert removed == {"0": 53, "2": 13, "4": 4}


def test_target_above_cap_is_impossible(mlp: nn.Sequential) -> None:
    modules = prunable(mlp)
    pattern = pk.get_pattern({"pattern": "4x1", "target_sparsity": 0.5}, modules)
    with pytest.raises(pk.ImpossibleTargetError, match=r"above max_sparsity_ratio_per_op 0\.98"):
        pattern.get_masks(magnitude_scores(modules), 0.99)


def test_pre_masks_are_monotone_and_count(mlp: nn.Sequential) -> None:
    modules = prunable(mlp)
    scores = magnitude_scores(modules)
    pattern = pk.get_pattern({"pattern": "4x1", "pruning_scope": "local"}, modules)
    first = pattern.get_masks(scores, 0.25)
    # New scores that would prefer other blocks: the old removals must stay.
    flipped = {name: 1.0 / (s + 1e-3) for name, s in scores.items()}
    second = pattern.get_masks(flipped, 0.5, pre_masks=first)
    for name in modules:
        assert not (second[name] & ~first[name]).any()  # nothing revived
        blocks = pattern.layouts[name].num_blocks
        removed_blocks = int((~second[name]).sum()) // 4
        assert removed_blocks == round(0.5 * blocks)


def test_indivisible_partial_skip_raise(cnn: nn.Module) -> None:
    modules = prunable(cnn)  # conv1 has 8 filters, fc 10 outputs: 4x1 leaves a partial tile
    scores = magnitude_scores(modules)
    partial = pk.get_pattern({"pattern": "4x1", "pruning_scope": "local"}, modules)
    assert partial.layouts["fc"].num_blocks == 3 * 256 and partial.layouts["fc"].sizes is not None
    masks = partial.get_masks(scores, 0.5)
    assert set(masks) == set(modules)
    skip = pk.get_pattern({"pattern": "4x1", "indivisible": "skip"}, modules)
    assert set(skip.skipped) == {"fc"} and "does not divide" in skip.skipped["fc"]
    assert skip.get_masks(scores, 0.5)["fc"].all()
    with pytest.raises(pk.IndivisibleShapeError, match="op 'fc'"):
        pk.get_pattern({"pattern": "4x1", "indivisible": "raise"}, modules)


def test_partial_edge_tiles_score_by_their_mean() -> None:
    fc = linear(6, 1)  # 4x1 -> tiles rows 0-3 and rows 4-5 (partial, 2 elements)
    scores = torch.tensor([[1.0], [1.0], [1.0], [1.0], [0.5], [2.0]])  # means 1.0 and 1.25
    pattern = pk.get_pattern({"pattern": "4x1", "pruning_scope": "local"}, {"fc": fc})
    mask = pattern.get_masks({"fc": scores}, 0.5)["fc"]  # round(1.0) = 1 tile
    assert mask.squeeze(1).tolist() == [False] * 4 + [True] * 2
    summed = pk.get_pattern(
        {"pattern": "4x1", "pruning_scope": "local", "criterion_reduce_type": "sum"}, {"fc": fc}
    )
    assert (
        summed.get_masks({"fc": scores}, 0.5)["fc"].squeeze(1).tolist() == [True] * 4 + [False] * 2
    )


@pytest.mark.parametrize("reduce,expected_removed_col", [("mean", 0), ("max", 1)])
def test_reduce_type_changes_block_scores(reduce: str, expected_removed_col: int) -> None:
    fc = linear(2, 2)
    scores = torch.tensor([[0.0, 2.0], [3.0, 2.0]])  # col 0: mean 1.5 max 3; col 1: mean 2 max 2
    pattern = pk.get_pattern(
        {"pattern": "channelx1", "pruning_scope": "local", "criterion_reduce_type": reduce},
        {"fc": fc},
    )
    mask = pattern.get_masks({"fc": scores}, 0.5)["fc"]
    assert not mask[:, expected_removed_col].any() and mask[:, 1 - expected_removed_col].all()


def test_infinite_scores_are_allowed_and_mixed_infinities_are_named() -> None:
    fc = linear(4, 1)
    scores = torch.tensor([[float("inf")], [1.0], [float("-inf")], [2.0]])
    mask = pk.get_pattern({"pattern": "1x1", "pruning_scope": "local"}, {"fc": fc}).get_masks(
        {"fc": scores}, 0.5
    )["fc"]
    assert mask.squeeze(1).tolist() == [True, False, False, True]
    both = torch.tensor([[float("inf")], [float("-inf")], [1.0], [1.0]])
    with pytest.raises(pk.ScoreError, match="mixes \\+inf and -inf"):
        pk.get_pattern({"pattern": "2x1", "pruning_scope": "local"}, {"fc": fc}).get_masks(
            {"fc": both}, 0.5
        )


def test_masks_follow_the_scores_device_and_leave_inputs_untouched(cnn: nn.Module) -> None:
    modules = prunable(cnn)
    scores = magnitude_scores(modules)
    before = {n: s.clone() for n, s in scores.items()}
    weights = {n: m.weight.detach().clone() for n, m in modules.items()}
    masks = pk.get_pattern({"pattern": "2x2", "target_sparsity": 0.6}, modules).get_masks(
        scores, 0.6
    )
    for name in modules:
        assert masks[name].shape == modules[name].weight.shape
        assert torch.equal(scores[name], before[name])
        assert torch.equal(modules[name].weight, weights[name])


def test_float64_and_bfloat16_scores_are_accepted(mlp: nn.Sequential) -> None:
    modules = prunable(mlp)
    base = magnitude_scores(modules)
    pattern = pk.get_pattern({"pattern": "1x1", "target_sparsity": 0.5}, modules)
    m32 = pattern.get_masks(base, 0.5)
    m64 = pattern.get_masks({n: s.double() for n, s in base.items()}, 0.5)
    mbf = pattern.get_masks({n: s.bfloat16() for n, s in base.items()}, 0.5)
    assert all(torch.equal(m32[n], m64[n]) for n in modules)
    assert sum(int((~m).sum()) for m in mbf.values()) == 176
