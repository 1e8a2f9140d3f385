"""The ``block_diagonal`` pattern, through prunekit's public API and the installed plugin.

Expected masks are built here from first principles (tile index = index // tile size,
diagonal = (tile column - tile row) mod G), never through the plugin's own layout code.
"""

from __future__ import annotations

import importlib.metadata as metadata
import math

import prunekit
import pytest
import torch
from prunekit.testing import check_pattern
from torch import Tensor, nn

from prunekit_example import BlockDiagonalPattern, DiagonalLayout


def config(**fields: object) -> dict[str, object]:
    return {"pattern": "block_diagonal", "pruning_scope": "local", **fields}


def diagonals(rows: int, cols: int, g: int) -> Tensor:
    """The diagonal of every element of a ``rows x cols`` view on a ``g x g`` grid of
    ``ceil(rows/g) x ceil(cols/g)`` tiles."""
    tile_rows = torch.arange(rows) // math.ceil(rows / g)
    tile_cols = torch.arange(cols) // math.ceil(cols / g)
    return (tile_cols[None, :] - tile_rows[:, None]) % g


def scores_from(diagonal: Tensor, per_diagonal: list[float]) -> Tensor:
    return torch.tensor(per_diagonal, dtype=torch.float32)[diagonal]


def mask_from(rows: list[str]) -> Tensor:
    return torch.tensor([[c == "#" for c in row] for row in rows])


# -- discovery -----------------------------------------------------------------------------
def test_found_through_the_installed_entry_point() -> None:
    assert "block_diagonal" in prunekit.PATTERNS
    entry = prunekit.PATTERNS.entry("block_diagonal")
    assert entry.owner == "prunekit-example"
    assert not entry.builtin
    assert entry.obj is BlockDiagonalPattern
    assert "block_diagonal" in prunekit.list_patterns()
    points = metadata.distribution("prunekit-example").entry_points
    assert [(ep.group, ep.name, ep.value) for ep in points if ep.group == "prunekit"] == [
        ("prunekit", "block_diagonal", "prunekit_example.plugin")
    ]
    record = next(r for r in prunekit.load_plugins() if r.distribution == "prunekit-example")
    assert record.status == "loaded"
    assert record.registered["patterns"] == ["block_diagonal"]


# -- exact masks ---------------------------------------------------------------------------
def test_linear_8x8_removes_the_two_lowest_diagonals() -> None:
    fc = nn.Linear(8, 8)
    pattern = prunekit.get_pattern(config(blocks=4), {"fc": fc})
    # Diagonal means 4, 1, 2, 3; the per-element noise sums to zero inside each diagonal.
    scores = scores_from(diagonals(8, 8, 4), [4.0, 1.0, 2.0, 3.0])
    noise = torch.tensor([0.5, -0.5]).repeat(4)
    scores = scores + noise[None, :]
    mask = pattern.get_masks({"fc": scores}, 0.5)["fc"]
    expected = mask_from(
        [
            "##....##",
            "##....##",
            "####....",
            "####....",
            "..####..",
            "..####..",
            "....####",
            "....####",
        ]
    )
    assert mask.dtype == torch.bool and mask.shape == fc.weight.shape
    assert torch.equal(mask, expected)


def test_ties_remove_the_lower_diagonal_first() -> None:
    pattern = prunekit.get_pattern(config(blocks=4), {"fc": nn.Linear(8, 8)})
    mask = pattern.get_masks({"fc": torch.ones(8, 8)}, 0.5)["fc"]
    assert torch.equal(mask, torch.isin(diagonals(8, 8, 4), torch.tensor([2, 3])))


def test_reduce_mean_versus_max() -> None:
    modules = {"fc": nn.Linear(8, 8)}
    # Diagonal 0 is low everywhere but one outlier: lowest by mean, highest by max.
    scores = scores_from(diagonals(8, 8, 4), [1.0, 3.0, 4.0, 5.0])
    scores[0, 0] = 17.0  # mean of diagonal 0: (15 * 1 + 17) / 16 = 2
    by_mean = prunekit.get_pattern(config(blocks=4), modules)
    by_max = prunekit.get_pattern(config(blocks=4, criterion_reduce_type="max"), modules)
    assert torch.equal(by_mean.get_masks({"fc": scores}, 0.25)["fc"], diagonals(8, 8, 4) != 0)
    assert torch.equal(by_max.get_masks({"fc": scores}, 0.25)["fc"], diagonals(8, 8, 4) != 1)


@pytest.mark.parametrize(
    ("in_features", "out_features", "blocks"), [(8, 8, 4), (32, 16, 8), (12, 24, 2), (64, 64, 16)]
)
@pytest.mark.parametrize("target", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_every_tile_row_and_column_keeps_the_same_number_of_tiles(
    in_features: int, out_features: int, blocks: int, target: float
) -> None:
    fc = nn.Linear(in_features, out_features)
    pattern = prunekit.get_pattern(config(blocks=blocks), {"fc": fc})
    mask = pattern.get_masks({"fc": torch.rand(out_features, in_features)}, target)["fc"]
    n, m = out_features // blocks, in_features // blocks
    tiles = mask.reshape(blocks, n, blocks, m)
    # Each tile is kept or removed whole.
    assert torch.equal(tiles.all(dim=(1, 3)), tiles.any(dim=(1, 3)))
    kept = tiles.all(dim=(1, 3)).sum(dtype=torch.int64)
    per_row = tiles.all(dim=(1, 3)).sum(dim=1)
    per_col = tiles.all(dim=(1, 3)).sum(dim=0)
    expected = blocks - min(round(target * blocks), math.floor(0.98 * blocks))
    assert int(kept) == expected * blocks
    assert torch.all(per_row == expected) and torch.all(per_col == expected)


def test_masked_matmul_is_a_sum_of_block_diagonal_matmuls() -> None:
    fc = nn.Linear(16, 12)  # view (12, 16), G = 4: tiles 3 x 4
    g, n, m = 4, 3, 4
    pattern = prunekit.get_pattern(config(blocks=g), {"fc": fc})
    weight = fc.weight.detach()
    mask = pattern.get_masks({"fc": weight.abs()}, 0.5)["fc"]
    kept = torch.unique(diagonals(12, 16, g)[mask]).tolist()
    assert len(kept) == 2
    x = torch.randn(16)
    pruned = weight * mask
    total = torch.zeros(12)
    for d in kept:
        blocks = [
            pruned[r * n : (r + 1) * n, (r + d) % g * m : ((r + d) % g + 1) * m] for r in range(g)
        ]
        rolled = x.reshape(g, m).roll(-d, dims=0).reshape(-1)
        total += torch.block_diag(*blocks) @ rolled
    torch.testing.assert_close(total, pruned @ x)


def test_conv2d_through_the_2d_view() -> None:
    conv = nn.Conv2d(4, 8, kernel_size=2)  # weight (out=8, in=4, 2, 2); view (8, 2*2*4)
    pattern = prunekit.get_pattern(config(blocks=4), {"conv": conv})
    # View column j = (kh * 2 + kw) * 4 + i (the input channel varies fastest); tiles 2 x 4.
    out, inp, kh, kw = torch.meshgrid(*(torch.arange(s) for s in conv.weight.shape), indexing="ij")
    column = (kh * 2 + kw) * 4 + inp
    diagonal = (column // 4 - out // 2) % 4
    scores = scores_from(diagonal, [3.0, 4.0, 1.0, 2.0])
    mask = pattern.get_masks({"conv": scores}, 0.5)["conv"]
    assert mask.shape == conv.weight.shape
    assert torch.equal(mask, (diagonal == 0) | (diagonal == 1))
    assert pattern.layouts["conv"].num_blocks == 4


# -- shapes G does not divide --------------------------------------------------------------
def test_partial_tiles_linear_10_to_6() -> None:
    fc = nn.Linear(10, 6)  # view (6, 10): tiles 2 x 3; tile-row 3 is all padding
    pattern = prunekit.get_pattern(config(blocks=4), {"fc": fc})
    layout = pattern.layouts["fc"]
    assert isinstance(layout, DiagonalLayout)
    assert layout.num_blocks == 4 and layout.tile == (2, 3)
    assert layout.sizes is not None and layout.sizes.tolist() == [18, 14, 14, 14]
    assert torch.equal(layout.diagonal_index(), diagonals(6, 10, 4))

    scores = scores_from(diagonals(6, 10, 4), [1.0, 4.0, 2.0, 3.0])
    mask = pattern.get_masks({"fc": scores}, 0.5)["fc"]
    assert torch.equal(
        mask,
        mask_from(
            [
                "...###...#",
                "...###...#",
                "###...###.",
                "###...###.",
                "...###...#",
                "...###...#",
            ]
        ),
    )
    assert int((~mask).sum()) == 18 + 14  # diagonals 0 and 2 are gone

    # All scores equal: by mean the first diagonal goes; by sum the smallest one (1, then 2).
    ones = {"fc": torch.ones(6, 10)}
    assert torch.equal(pattern.get_masks(ones, 0.25)["fc"], diagonals(6, 10, 4) != 0)
    by_sum = prunekit.get_pattern(config(blocks=4, criterion_reduce_type="sum"), {"fc": fc})
    assert torch.equal(by_sum.get_masks(ones, 0.25)["fc"], diagonals(6, 10, 4) != 1)


@pytest.mark.parametrize(("rows", "cols"), [(6, 10), (9, 5), (5, 7), (13, 31), (4, 6)])
def test_partial_tiles_keep_the_padded_grid_balanced(rows: int, cols: int) -> None:
    pattern = prunekit.get_pattern(config(blocks=4), {"fc": nn.Linear(cols, rows)})
    diagonal = diagonals(rows, cols, 4)
    for k in range(1, 4):
        mask = pattern.get_masks({"fc": torch.rand(rows, cols)}, k / 4)["fc"]
        removed = torch.unique(diagonal[~mask])
        # Whole diagonals only, exactly k of them, and every diagonal holds data.
        assert removed.numel() == k
        assert torch.equal(mask, ~torch.isin(diagonal, removed))
    assert torch.unique(diagonal).tolist() == [0, 1, 2, 3]


def test_a_view_smaller_than_the_grid_uses_fewer_diagonals() -> None:
    pattern = prunekit.get_pattern(config(blocks=4), {"fc": nn.Linear(3, 2)})
    layout = pattern.layouts["fc"]
    assert layout.num_blocks == 2  # min(4, rows=2, cols=3)
    assert layout.diagonal_index().tolist() == [[0, 0, 1], [1, 1, 0]]
    mask = pattern.get_masks({"fc": torch.tensor([[5.0, 5.0, 1.0], [1.0, 1.0, 5.0]])}, 0.5)["fc"]
    assert mask.tolist() == [[True, True, False], [False, False, True]]


def test_indivisible_raise_names_the_op() -> None:
    with pytest.raises(prunekit.IndivisibleShapeError, match=r"op 'head'.*\(6, 10\)"):
        prunekit.get_pattern(config(blocks=4, indivisible="raise"), {"head": nn.Linear(10, 6)})
    # A divisible op is fine under 'raise'.
    prunekit.get_pattern(config(blocks=4, indivisible="raise"), {"fc": nn.Linear(8, 8)})


def test_indivisible_skip_leaves_the_op_dense() -> None:
    modules = {"fc": nn.Linear(8, 8), "head": nn.Linear(10, 6)}
    pattern = prunekit.get_pattern(config(blocks=4, indivisible="skip"), modules)
    assert list(pattern.skipped) == ["head"] and "(6, 10)" in pattern.skipped["head"]
    masks = pattern.get_masks({"fc": torch.rand(8, 8), "head": torch.rand(6, 10)}, 0.5)
    assert bool(masks["head"].all())
    assert int((~masks["fc"]).sum()) == 32


# -- options, scope, pre-masks -------------------------------------------------------------
@pytest.mark.parametrize("bad", [1, 0, 5000, "four"])
def test_invalid_blocks_is_a_config_error_naming_the_field(bad: object) -> None:
    with pytest.raises(prunekit.ConfigError, match="blocks"):
        prunekit.get_pattern(config(blocks=bad), {"fc": nn.Linear(8, 8)})
    with pytest.raises(prunekit.ConfigError, match="blocks"):
        prunekit.get_pattern(config(pattern_options={"blocks": bad}), {"fc": nn.Linear(8, 8)})


def test_unknown_option_is_refused() -> None:
    with pytest.raises(prunekit.ConfigError, match=r"blokcs.*did you mean 'blocks'"):
        prunekit.get_pattern(config(blokcs=4), {"fc": nn.Linear(8, 8)})


def test_global_scope_counts_elements_across_ops_within_caps() -> None:
    modules = {"low": nn.Linear(8, 8), "high": nn.Linear(8, 8)}
    pattern = prunekit.get_pattern({"pattern": "block_diagonal", "blocks": 4}, modules)
    diagonal = diagonals(8, 8, 4)
    scores = {
        "low": scores_from(diagonal, [1.0, 2.0, 3.0, 4.0]),
        "high": scores_from(diagonal, [14.0, 13.0, 12.0, 11.0]),
    }
    masks = pattern.get_masks(scores, 0.5)  # 64 of 128 elements: four diagonals of 16
    # "low" may lose at most floor(0.98 * 4) = 3 diagonals; "high" gives its lowest one.
    assert torch.equal(masks["low"], diagonal == 3)
    assert torch.equal(masks["high"], diagonal != 3)


def test_pre_mask_removals_stay_and_count() -> None:
    pattern = prunekit.get_pattern(config(blocks=4), {"fc": nn.Linear(8, 8)})
    diagonal = diagonals(8, 8, 4)
    pre = diagonal != 2
    scores = {"fc": scores_from(diagonal, [1.0, 2.0, 9.0, 4.0])}
    assert torch.equal(pattern.get_masks(scores, 0.25, {"fc": pre})["fc"], pre)
    assert torch.equal(
        pattern.get_masks(scores, 0.5, {"fc": pre})["fc"],
        torch.isin(diagonal, torch.tensor([1, 3])),
    )


@pytest.mark.parametrize("blocks", [2, 4])
def test_block_diagonal_keeps_prunekit_s_contract(blocks: int) -> None:
    """prunekit's contract battery, as any plugin's own test suite runs it after install."""
    check_pattern("block_diagonal", blocks=blocks)
