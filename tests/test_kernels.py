"""The numpy-backed selection steps against torch's own (slower) kernels."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.masks.select import kernels, threads

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@st.composite
def tied_values(draw: st.DrawFn, max_size: int = 3000) -> torch.Tensor:
    n = draw(st.integers(1, max_size))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    values = torch.randn(n, generator=generator)
    if draw(st.booleans()):
        values = values.round()  # ties, and -0.0 beside 0.0
    if draw(st.booleans()):
        values[torch.randint(n, (max(1, n // 20),), generator=generator)] = float("-inf")
    return values.to(draw(st.sampled_from(DTYPES)))


@given(values=tied_values())
def test_value_pairs_equal_unique_with_counts(values: torch.Tensor) -> None:
    got_values, got_counts = kernels.value_pairs(values)
    wide = values.to(torch.float64) + 0.0
    expected_values, expected_counts = torch.unique(wide, sorted=True, return_counts=True)
    assert torch.equal(got_values.to(torch.float64), expected_values)
    assert torch.equal(got_counts, expected_counts)


@given(values=tied_values())
def test_order_by_value_is_a_stable_sort(values: torch.Tensor) -> None:
    wide = values.to(torch.float64) + 0.0
    expected = torch.sort(wide, stable=True).indices
    assert torch.equal(kernels.order_by_value(wide), expected)
    narrow = values.to(torch.float32) + 0.0
    assert torch.equal(kernels.order_by_value(narrow), expected)


@given(values=tied_values(), data=st.data())
def test_kth_smallest_and_rank_bracket_follow_the_sorted_order(
    values: torch.Tensor, data: st.DataObject
) -> None:
    ordered = torch.sort(values.to(torch.float64)).values
    n = values.numel()
    k = data.draw(st.integers(1, n))
    assert kernels.kth_smallest(values, k) == float(ordered[k - 1])
    low = data.draw(st.none() | st.integers(0, n - 1))
    high = data.draw(st.none() | st.integers(low or 0, n - 1))
    a, b = kernels.rank_bracket(values.to(torch.float64), low, high)
    assert a == (float(ordered[low]) if low is not None else None)
    if high is None:
        assert b is None
    else:
        above = ordered[ordered > ordered[high]]
        assert b == (float(above[0]) if above.numel() else None)


@pytest.mark.parametrize("n", [1, 1000, (1 << 18) + 13])  # the last one is split over threads
@pytest.mark.parametrize("dtype", DTYPES)
def test_greater_equal_and_count_true(n: int, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(n)
    values = torch.randn(n, generator=generator).round().to(dtype)
    threshold = float(values[n // 2])
    expected = values >= threshold
    assert torch.equal(kernels.greater_equal(values, threshold), expected)
    into = torch.empty(n, dtype=torch.uint8)
    assert torch.equal(
        kernels.greater_equal(values, threshold, out=into).view(torch.bool), expected
    )
    assert kernels.count_true(into) == int(expected.sum())
    assert kernels.count_true(expected) == int(expected.sum())


def test_sorted_values_widens_half_precision_exactly() -> None:
    values = torch.tensor([3.0, -1.5, 0.0, float("inf")], dtype=torch.bfloat16)
    got = kernels.sorted_values(values)
    assert got.dtype == torch.float32
    assert got.tolist() == [-1.5, 0.0, 3.0, float("inf")]


@pytest.mark.skipif(
    not threads.thread_count_settable(), reason="torch's native backend: items run one by one"
)
def test_map_ops_keeps_order_and_restores_torch_threads() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen_threads: list[int] = []

        def work(item: int) -> int:
            seen_threads.append(torch.get_num_threads())
            return item * item

        assert threads.map_ops(work, list(range(10))) == [i * i for i in range(10)]
        assert set(seen_threads) == {1}  # each item ran single-threaded
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_map_ops_raises_the_first_failure_and_restores_torch_threads() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:

        def work(item: int) -> int:
            if item == 3:
                raise ValueError("item 3")
            return item

        with pytest.raises(ValueError, match="item 3"):
            threads.map_ops(work, list(range(8)))
        assert torch.get_num_threads() == 2
        assert threads.map_ops(work, [0, 1, 2]) == [0, 1, 2]  # usable again
    finally:
        torch.set_num_threads(before)
