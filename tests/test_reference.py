"""The selection core against a plain reference: exact counts, ties, caps, global scope."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.errors import ImpossibleTargetError
from prunekit.masks.limits import block_caps, local_count
from prunekit.masks.numeric import sortable_keys
from prunekit.masks.select.reference import KeyedOp as OpBlocks
from prunekit.masks.select.reference import global_counts, lowest_k


def cap_counts(blocks: int, low: float, high: float, pre_removed: int) -> tuple[int, int]:
    """The caps of an op whose blocks each remove the same share of it."""
    return block_caps(blocks, high * blocks, low * blocks, pre_removed)


def test_sortable_keys_order_floats_exactly() -> None:
    values = torch.tensor([3.0, -0.0, 0.0, -1.5, float("inf"), float("-inf"), 1e-30, -1e-30])
    keys = sortable_keys(values)
    assert keys.dtype == torch.int32
    assert torch.equal(torch.argsort(keys, stable=True), torch.argsort(values, stable=True))
    assert keys[1] == keys[2]  # -0.0 ties with 0.0


def test_sortable_keys_keep_float64_distinctions() -> None:
    values = torch.tensor([1.0, 1.0 + 2**-40, -2.0, -2.0 - 2**-40], dtype=torch.float64)
    keys = sortable_keys(values)
    assert keys.dtype == torch.int64
    assert len(set(keys.tolist())) == 4
    assert keys[3] < keys[2] < keys[0] < keys[1]


def test_lowest_k_breaks_ties_toward_lower_index() -> None:
    keys = sortable_keys(torch.tensor([5.0, 1.0, 2.0, 1.0, 2.0, 2.0, 0.5]))
    assert lowest_k(keys, 3).tolist() == [False, True, False, True, False, False, True]
    assert lowest_k(keys, 4).tolist() == [False, True, True, True, False, False, True]
    assert lowest_k(keys, 5).tolist() == [False, True, True, True, True, False, True]
    assert lowest_k(keys, 0).sum() == 0
    assert lowest_k(keys, 7).all() and lowest_k(keys, 99).all()


def test_local_count_uses_python_round_and_caps() -> None:
    assert local_count(round(10 * 0.25), 0, 10) == 2  # round(2.5) == 2, as torch's prune
    assert local_count(round(10 * 0.35), 0, 10) == 4  # round(3.5) == 4
    assert local_count(round(10 * 0.9), 0, 8) == 8
    assert local_count(round(10 * 0.0), 3, 8) == 3
    assert cap_counts(100, 0.07, 0.98, 0) == (7, 98)
    assert cap_counts(3, 0.0, 0.98, 0) == (0, 2)
    assert cap_counts(10, 0.0, 0.5, 7) == (7, 7)  # pre-removed blocks stay removed


def reference_counts(
    scores: list[list[float]], sizes: list[list[int]], lo: list[int], hi: list[int], target: int
) -> list[int]:
    """Plain Python: forced (min-cap) blocks first, then the global order within max caps."""
    rank: dict[tuple[int, int], int] = {}
    for i, op in enumerate(scores):
        for r, j in enumerate(sorted(range(len(op)), key=lambda j: (op[j], j))):
            rank[(i, j)] = r
    counts = list(lo)
    total = 0
    for i, op in enumerate(scores):
        order = sorted(range(len(op)), key=lambda j: (op[j], j))
        total += sum(sizes[i][j] for j in order[: lo[i]])
    if total >= target:
        return counts
    sequence = sorted(((op[j], i, j) for i, op in enumerate(scores) for j in range(len(op))))
    for _, i, j in sequence:
        if not (lo[i] <= rank[(i, j)] < hi[i]):
            continue
        counts[i] += 1
        total += sizes[i][j]
        if total >= target:
            overshoot = total - target
            if overshoot > 0 and overshoot >= sizes[i][j] - overshoot:
                counts[i] -= 1
            break
    return counts


def as_ops(
    scores: list[list[float]], sizes: list[list[int]], lo: list[int], hi: list[int]
) -> list[OpBlocks]:
    ops = []
    for op, sz, a, b in zip(scores, sizes, lo, hi, strict=True):
        uniform = len(set(sz)) == 1
        ops.append(
            OpBlocks(
                sortable_keys(torch.tensor(op)),
                None if uniform else torch.tensor(sz, dtype=torch.int64),
                sz[0],
                a,
                b,
            )
        )
    return ops


@st.composite
def global_problems(draw: st.DrawFn) -> tuple:
    n_ops = draw(st.integers(1, 4))
    # Few distinct values: tie-heavy on purpose.
    value = st.sampled_from([-2.0, -0.5, 0.0, 0.0, 0.25, 1.0, 1.0, 3.0, float("inf")])
    scores, sizes, lo, hi = [], [], [], []
    for _ in range(n_ops):
        n = draw(st.integers(1, 12))
        scores.append(draw(st.lists(value, min_size=n, max_size=n)))
        if draw(st.booleans()):
            size = draw(st.integers(1, 4))
            sizes.append([size] * n)
        else:
            sizes.append(draw(st.lists(st.integers(1, 4), min_size=n, max_size=n)))
        b = draw(st.integers(0, n))
        a = draw(st.integers(0, b))
        lo.append(a)
        hi.append(b)
    reachable = sum(
        sum(sorted(zip(sc, sz, strict=True), key=lambda p: p[0])[k][1] for k in range(b))
        for sc, sz, b in zip(scores, sizes, hi, strict=True)
    )
    target = draw(st.integers(0, max(reachable, 0)))
    return scores, sizes, lo, hi, target


@given(global_problems())
def test_global_counts_match_reference(problem: tuple) -> None:
    scores, sizes, lo, hi, target = problem
    ops = as_ops(scores, sizes, lo, hi)
    # The reachable bound above sorted by score only; recompute it exactly with ties by index.
    exact_reachable = sum(op.elements_of_lowest(op.hi) for op in ops)
    if target > exact_reachable:
        with pytest.raises(ImpossibleTargetError):
            global_counts(ops, target)
        return
    assert global_counts(ops, target) == reference_counts(scores, sizes, lo, hi, target)


def test_global_counts_unstructured_exact_total() -> None:
    torch.manual_seed(1)
    ops = [OpBlocks(sortable_keys(torch.randn(n)), None, 1, 0, n) for n in (100, 37, 250)]
    for target in (0, 1, 193, 386, 387):
        assert sum(global_counts(ops, target)) == target


def test_global_counts_respect_max_cap_and_move_budget() -> None:
    low = OpBlocks(sortable_keys(torch.zeros(10)), None, 1, 0, 5)  # capped at 5 of 10
    high = OpBlocks(sortable_keys(torch.ones(10)), None, 1, 0, 10)
    assert global_counts([low, high], 8) == [5, 3]


def test_global_counts_brings_ops_up_to_min() -> None:
    low = OpBlocks(sortable_keys(torch.zeros(10)), None, 1, 0, 10)
    high = OpBlocks(sortable_keys(torch.ones(10)), None, 1, 4, 10)
    assert global_counts([low, high], 8) == [4, 4]


def test_impossible_target_says_by_how_much() -> None:
    ops = [OpBlocks(sortable_keys(torch.zeros(10)), None, 2, 0, 5)]
    with pytest.raises(ImpossibleTargetError, match="short by 2 elements"):
        global_counts(ops, 12)


def test_float64_keys_use_four_passes_exactly() -> None:
    torch.manual_seed(2)
    values = torch.randn(500, dtype=torch.float64)
    ops = [OpBlocks(sortable_keys(values), None, 1, 0, 500)]
    counts = global_counts(ops, 123)
    assert counts == [123]
    chosen = lowest_k(ops[0].keys, 123)
    assert math.isclose(float(values[chosen].max()), float(torch.sort(values).values[122]))


def sorted_reference_counts(
    values: list[torch.Tensor], lo: list[int], hi: list[int], target: int
) -> list[int]:
    """Vectorized reference for unit blocks: one stable sort of everything, min caps first."""
    keys = torch.cat([sortable_keys(v) for v in values])
    op = torch.cat([torch.full((v.numel(),), i) for i, v in enumerate(values)])
    order = torch.sort(keys, stable=True).indices
    op_sorted = op[order]
    rank = torch.empty_like(op_sorted)
    for i in range(len(values)):  # rank of each block within its own op's order
        where = op_sorted == i
        rank[where] = torch.arange(int(where.sum()))
    lo_t, hi_t = torch.tensor(lo)[op_sorted], torch.tensor(hi)[op_sorted]
    forced = rank < lo_t
    eligible = (rank >= lo_t) & (rank < hi_t)
    need = target - int(forced.sum())
    taken = eligible & (torch.cumsum(eligible, 0) <= max(need, 0))
    chosen = forced | taken
    return [int((chosen & (op_sorted == i)).sum()) for i in range(len(values))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_digits_on_large_problems_match_a_full_sort(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    sizes = (40_000, 25_000, 9_000)  # 74,000 blocks: 16-bit digits
    values = [(torch.randn(n, generator=generator) * 50).round() / 7 for n in sizes]  # many ties
    lo = [0, 2_000, 0]
    hi = [39_000, 25_000, 3_000]
    ops = [
        OpBlocks(sortable_keys(v), None, 1, a, b) for v, a, b in zip(values, lo, hi, strict=True)
    ]
    for target in (0, 1_999, 30_000, 52_345, 67_000):
        assert global_counts(ops, target) == sorted_reference_counts(values, lo, hi, target)
