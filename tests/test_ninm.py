"""N:M: exactly N removed in every pruned group of M, INC's reading of N."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk


def linear(out: int, inp: int) -> nn.Linear:
    return nn.Linear(inp, out, bias=False)


def removed_per_group(mask: torch.Tensor, m: int) -> torch.Tensor:
    view = mask.reshape(mask.shape[0], -1)
    return (~view[:, : (view.shape[1] // m) * m]).reshape(view.shape[0], -1, m).sum(2)


def test_2_4_at_half_is_exactly_two_of_every_four() -> None:
    fc = linear(2, 8)
    scores = torch.tensor([[4.0, 1, 3, 2, 0, 0, 0, 0], [1, 2, 3, 4, 8, 7, 6, 5]])
    pattern = pk.get_pattern({"pattern": "2:4", "pruning_scope": "local"}, {"fc": fc})
    mask = pattern.get_masks({"fc": scores}, 0.5)["fc"]
    # Ties (the zeros) go to the lower index: weights 4 and 5 of row 0 go, 6 and 7 stay.
    assert mask.tolist() == [
        [True, False, True, False, False, False, True, True],
        [False, False, True, True, True, True, False, False],
    ]
    assert pattern.is_hardware_valid("fc", mask)


@pytest.mark.parametrize("spec,target", [("2:4", 0.5), ("1:4", 0.25), ("4:8", 0.5), ("2:8", 0.25)])
def test_every_group_is_n_m_at_n_over_m(spec: str, target: float) -> None:
    n, m = map(int, spec.split(":"))
    conv = nn.Conv2d(8, 16, 3, bias=False)  # view (16, 72): 72 divisible by 4 and 8
    scores = torch.rand(conv.weight.shape, generator=torch.Generator().manual_seed(1))
    pattern = pk.get_pattern({"pattern": spec, "pruning_scope": "local"}, {"c": conv})
    mask = pattern.get_masks({"c": scores}, target)["c"]
    from prunekit.masks.views import to_2d

    assert (removed_per_group(to_2d(mask), m) == n).all()
    assert pattern.is_hardware_valid("c", mask)


def test_below_n_over_m_the_lowest_groups_become_n_m_and_the_rest_stay_dense() -> None:
    fc = linear(4, 8)
    scores = torch.arange(32, dtype=torch.float32).reshape(4, 8)
    pattern = pk.get_pattern({"pattern": "2:4", "pruning_scope": "local"}, {"fc": fc})
    mask = pattern.get_masks({"fc": scores}, 0.25)["fc"]
    per_group = removed_per_group(mask, 4)
    assert per_group.tolist() == [[2, 2], [2, 2], [0, 0], [0, 0]]
    assert int((~mask).sum()) == 8
    assert not pattern.is_hardware_valid("fc", mask)


def test_above_n_over_m_is_an_error() -> None:
    pattern = pk.get_pattern({"pattern": "1:4", "target_sparsity": 0.2}, {"fc": linear(4, 8)})
    with pytest.raises(pk.ImpossibleTargetError, match="above N/M = 1/4"):
        pattern.get_masks({"fc": torch.rand(4, 8)}, 0.3)


def test_ties_never_keep_more_than_m_minus_n() -> None:
    fc = linear(3, 8)
    pattern = pk.get_pattern({"pattern": "2:4", "pruning_scope": "local"}, {"fc": fc})
    mask = pattern.get_masks({"fc": torch.zeros(3, 8)}, 0.5)["fc"]  # all tied
    assert (removed_per_group(mask, 4) == 2).all()
    assert mask[0].tolist() == [False, False, True, True] * 2


def test_global_scope_picks_groups_across_layers_by_score() -> None:
    a, b = linear(2, 8), linear(2, 8)
    scores = {"a": torch.full((2, 8), 1.0), "b": torch.full((2, 8), 0.5)}
    pattern = pk.get_pattern({"pattern": "2:4", "target_sparsity": 0.25}, {"a": a, "b": b})
    masks = pattern.get_masks(scores, 0.25)
    # 32 weights, 8 to remove = 4 groups of 2: all of b's groups (lower scores).
    assert int((~masks["a"]).sum()) == 0 and (removed_per_group(masks["b"], 4) == 2).all()


def test_edge_columns_stay_dense_or_the_op_is_skipped_or_refused() -> None:
    conv = nn.Conv2d(3, 4, 3, bias=False)  # view (4, 27): 6 groups of 4 and 3 edge weights
    scores = {"c": torch.rand(conv.weight.shape)}
    config = {"pattern": "2:4", "pruning_scope": "local", "indivisible": "partial"}
    partial = pk.get_pattern(config, {"c": conv})
    mask = partial.get_masks(scores, 0.4)["c"]
    from prunekit.masks.views import to_2d

    assert to_2d(mask)[:, 24:].all()
    assert int((~mask).sum()) == 2 * round(0.4 * 108 / 2)
    assert not partial.is_hardware_valid("c", mask)
    with pytest.warns(pk.PruningWarning, match=r"leaves 1 of 1 ops unpruned \('c': its 2-D"):
        skip = pk.get_pattern({"pattern": "2:4"}, {"c": conv})  # skip: the default, as INC
    assert "not a multiple of M=4" in skip.skipped["c"]
    with pytest.raises(pk.IndivisibleShapeError, match="op 'c'"):
        pk.get_pattern({"pattern": "2:4", "indivisible": "raise"}, {"c": conv})


def test_pre_masks_keep_their_removed_weights_inside_the_group() -> None:
    fc = linear(1, 4)
    pattern = pk.get_pattern({"pattern": "2:4", "pruning_scope": "local"}, {"fc": fc})
    pre = torch.tensor([[True, True, False, True]])  # the best weight was removed before
    scores = {"fc": torch.tensor([[1.0, 2.0, 3.0, 0.5]])}
    mask = pattern.get_masks(scores, 0.5, pre_masks={"fc": pre})["fc"]
    # Still exactly 2 of 4: the pre-removed one counts, plus the lowest other (index 3).
    assert mask.tolist() == [[True, True, False, False]]


@pytest.mark.parametrize(
    "spec,message", [("4:4", "1 <= N < M"), ("0:4", "1 <= N < M"), ("5:4", "1 <= N < M")]
)
def test_invalid_specs(spec: str, message: str) -> None:
    with pytest.raises(pk.ConfigError, match=message):
        pk.load_config({"pattern": spec})


@pytest.mark.parametrize("m", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("dtype", [torch.int32, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [7, 700])  # few weights sort; many rank pairwise (m <= 8)
def test_group_ranking_equals_a_stable_sort(m: int, dtype: torch.dtype, rows: int) -> None:
    from prunekit.masks.groups import kept_in_groups as _kept_in_groups

    generator = torch.Generator().manual_seed(m)
    keys = torch.randint(-2, 3, (rows, 11, m), generator=generator, dtype=torch.int32)  # ties
    keys = keys.to(dtype)
    for n in range(1, m):
        lowest = torch.sort(keys.to(torch.float64), dim=2, stable=True).indices[..., :n]
        expected = torch.ones(keys.shape, dtype=torch.bool).scatter_(2, lowest, False)
        assert torch.equal(_kept_in_groups(keys, n), expected)


@pytest.mark.parametrize(
    "spec,config,target,width",
    [
        ("2:4", {}, 0.5, 4),
        ("1:4", {}, 0.25, 4),
        ("4:8", {}, 0.5, 8),
        ("2:4", {}, 0.3, None),  # below N/M the groups compete: some stay dense
        ("2:4", {"target_sparsity": 0.4, "max_sparsity_ratio_per_op": 0.4}, 0.5, None),  # capped
        ("1x1", {}, 0.5, None),
        ("4x1", {}, 0.5, None),
    ],
)
def test_independent_column_width_is_m_only_where_every_group_is_n_m(
    spec: str, config: dict, target: float, width: int | None
) -> None:
    pattern = pk.get_pattern({"pattern": spec, **config}, {"fc": linear(4, 16)})
    assert pattern.independent_column_width("fc", target) == width


def test_a_skipped_op_has_no_independent_columns() -> None:
    with pytest.warns(pk.PruningWarning, match="multiple of M=4"):
        pattern = pk.get_pattern({"pattern": "2:4"}, {"fc": linear(4, 6)})
    assert pattern.independent_column_width("fc", 0.5) is None
