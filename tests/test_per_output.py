"""``pruning_scope: "per_output"``: every output row of every op reaches the target alone,
with exact counts, ties to the lower index, caps and pre-masks as for any op."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import prunekit as pk


def linears(*shapes: tuple[int, int]) -> dict[str, nn.Linear]:
    return {f"fc{i}": nn.Linear(inp, out, bias=False) for i, (out, inp) in enumerate(shapes)}


def per_row_reference(scores: Tensor, target: float) -> Tensor:
    """The plain rule: in every row, the round(target * cols) lowest scores go (a stable
    sort: ties to the lower column)."""
    cols = scores.shape[1]
    k = round(target * cols)
    order = torch.sort(scores, dim=1, stable=True).indices[:, :k]
    keep = torch.ones_like(scores, dtype=torch.bool)
    return keep.scatter_(1, order, False)


@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 40),
    target=st.floats(0.0, 0.95),
    levels=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_1x1_equals_a_stable_sort_per_row_on_tie_heavy_scores(
    rows: int, cols: int, target: float, levels: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (rows, cols), generator=generator).float()
    modules = linears((rows, cols))
    config = {"pattern": "1x1", "pruning_scope": "per_output", "max_sparsity_ratio_per_op": 1.0}
    pattern = pk.get_pattern({**config, "target_sparsity": target}, modules)
    mask = pattern.get_masks({"fc0": scores}, target)["fc0"]
    assert torch.equal(mask, per_row_reference(scores, target))


@pytest.mark.parametrize(
    "spec,options",
    [
        ("1x1", {}),
        ("2:4", {}),
        ("4x1", {}),
        ("1x4", {}),
        ("2x2", {}),
        ("channelx1", {}),
        ("column", {}),
        ("weight", {}),
        ("random", {}),
        ("ln_structured", {"dim": 1}),
        ("block_diagonal", {"blocks": 4}),
    ],
)
def test_every_row_of_every_op_reaches_the_target(spec: str, options: dict[str, int]) -> None:
    modules = linears((8, 16), (16, 32))
    config = {"pattern": spec, "pruning_scope": "per_output", "target_sparsity": 0.5, **options}
    pattern = pk.get_pattern(config, modules)
    scores = {n: torch.rand(m.weight.shape) for n, m in modules.items()}
    masks = pattern.get_masks(scores, 0.5)
    streamed = dict(pattern.iter_masks(scores, 0.5))
    for name, mask in masks.items():
        removed = (~mask).sum(dim=1)
        assert (removed == mask.shape[1] // 2).all(), (spec, name, removed.tolist())
        assert torch.equal(streamed[name], mask)


def test_pre_masks_stay_removed_and_count_per_row() -> None:
    modules = linears((3, 8))
    pattern = pk.get_pattern({"pattern": "1x1", "pruning_scope": "per_output"}, modules)
    scores = torch.arange(24, dtype=torch.float32).reshape(3, 8)
    pre = torch.ones(3, 8, dtype=torch.bool)
    pre[0, 7] = False  # the highest score of row 0 was removed before
    pre[1, :6] = False  # row 1 already lost 6 of 8
    mask = pattern.get_masks({"fc0": scores}, 0.5, pre_masks={"fc0": pre})["fc0"]
    assert (~mask[0]).nonzero().flatten().tolist() == [0, 1, 2, 7]
    assert (~mask[1]).nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]
    assert (~mask[2]).nonzero().flatten().tolist() == [0, 1, 2, 3]


def test_the_max_cap_binds_every_row() -> None:
    modules = linears((4, 10))
    config = {"pattern": "1x1", "pruning_scope": "per_output", "max_sparsity_ratio_per_op": 0.3}
    pattern = pk.get_pattern({**config, "target_sparsity": 0.3}, modules)
    mask = pattern.get_masks({"fc0": torch.rand(4, 10)}, 0.3)["fc0"]
    assert ((~mask).sum(dim=1) == 3).all()


def test_whole_row_blocks_are_refused() -> None:
    pattern = pk.get_pattern(
        {"pattern": "1xchannel", "pruning_scope": "per_output", "target_sparsity": 0.5},
        linears((4, 8)),
    )
    with pytest.raises(pk.IndivisibleShapeError, match="whole rows"):
        pattern.get_masks({"fc0": torch.rand(4, 8)}, 0.5)


def test_partial_edge_blocks_are_refused_with_the_remedy() -> None:
    pattern = pk.get_pattern(
        {"pattern": "1x4", "pruning_scope": "per_output", "target_sparsity": 0.5},
        linears((4, 10)),
    )
    with pytest.raises(pk.IndivisibleShapeError, match="indivisible='skip'"):
        pattern.get_masks({"fc0": torch.rand(4, 10)}, 0.5)


def test_a_transposed_convolution_is_refused_by_name() -> None:
    modules = {"up": nn.ConvTranspose2d(4, 8, 3)}
    pattern = pk.get_pattern(
        {"pattern": "weight", "pruning_scope": "per_output", "target_sparsity": 0.5}, modules
    )
    with pytest.raises(pk.UnsupportedModuleError, match=r"'up'.*ConvTranspose2d"):
        pattern.get_masks({"up": torch.rand(4, 8, 3, 3)}, 0.5)


def test_configs_that_cannot_mean_per_output_are_refused() -> None:
    with pytest.raises(pk.ConfigError, match="pruning_scope: coupled"):
        pk.load_config({"pattern": "1xchannel", "pruning_scope": "per_output", "coupled": True})
    with pytest.raises(pk.ConfigError, match="pruning_scope: pattern 'head' chooses"):
        pk.load_config({"pattern": "head", "pruning_scope": "per_output"})


def test_conv_rows_are_its_filters() -> None:
    conv = nn.Conv2d(3, 6, 3, bias=False)  # (6, 27) view
    pattern = pk.get_pattern(
        {"pattern": "1x1", "pruning_scope": "per_output", "target_sparsity": 0.5}, {"c": conv}
    )
    mask = pattern.get_masks({"c": torch.rand(6, 3, 3, 3)}, 0.5)["c"]
    assert ((~mask).reshape(6, -1).sum(dim=1) == 14).all()  # round(0.5 * 27) = 14 (to even)
