"""Grid layouts' fast reductions and expansions against the plain tensor expressions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.masks.layouts import GridLayout


@given(
    n=st.sampled_from([1, 2, 4]),
    m=st.sampled_from([1, 2, 3, 4, 8, 16]),
    grid=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    how=st.sampled_from(["mean", "sum", "max"]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    seed=st.integers(0, 2**31),
)
def test_tile_reduction_equals_the_plain_sum(
    n: int, m: int, grid: tuple[int, int], how: str, dtype: torch.dtype, seed: int
) -> None:
    """Integer-valued scores: every summation order gives the same float, so the halving
    reduction must equal the plain one exactly."""
    rows, cols = n * grid[0], m * grid[1]
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(-50, 50, (rows, cols), generator=generator).to(dtype)
    layout = GridLayout((rows, cols), n, m)
    tiles = scores.reshape(grid[0], n, grid[1], m)
    accumulator = torch.float64 if dtype == torch.float64 else torch.float32
    if how == "max":
        expected = tiles.amax(dim=(1, 3)).reshape(-1)
    else:
        expected = tiles.sum(dim=(1, 3), dtype=accumulator).reshape(-1)
        if how == "mean":
            expected = expected / (n * m)
    if n * m == 1:
        expected = scores.reshape(-1)  # one element per block: the scores themselves
    got = layout.reduce(scores, how)  # type: ignore[arg-type]
    assert got.dtype == expected.dtype
    assert torch.equal(got, expected)


@given(
    n=st.sampled_from([1, 2, 4]),
    m=st.sampled_from([1, 2, 3, 4, 8]),
    grid=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    seed=st.integers(0, 2**31),
)
def test_block_expansion_equals_repeat_interleave(
    n: int, m: int, grid: tuple[int, int], seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(grid[0] * grid[1], generator=generator) < 0.5
    layout = GridLayout((n * grid[0], m * grid[1]), n, m)
    expected = (
        keep.reshape(grid[0], grid[1]).repeat_interleave(n, dim=0).repeat_interleave(m, dim=1)
    )
    assert torch.equal(layout.expand(keep), expected)


@pytest.mark.parametrize("m", [2, 4, 8])
def test_expansion_of_a_conv_weight_follows_the_2d_view(m: int) -> None:
    """Conv (out, in, kh, kw): INC's view puts the input channel fastest; blocks of m
    consecutive view columns map back to m input channels at one kernel position."""
    shape = (3, 2 * m, 2, 2)
    layout = GridLayout(shape, 1, m)
    keep = torch.arange(layout.num_blocks) % 3 == 0
    mask = layout.expand(keep)
    view = mask.permute(0, 2, 3, 1).reshape(3, -1)
    expected = keep.reshape(3, -1).repeat_interleave(m, dim=1)
    assert torch.equal(view, expected)
