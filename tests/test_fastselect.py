"""The counting selection against the exact radix reference: same masks, always.

Small samples force the bracket to miss often, so the widening path is exercised too.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.errors import ImpossibleTargetError
from prunekit.patterns import fastselect
from prunekit.patterns.fastselect import FastOp, global_select
from prunekit.patterns.selection import OpBlocks, global_counts, sortable_keys
from prunekit.patterns.selection import lowest_k as reference_lowest_k


@st.composite
def problems(draw: st.DrawFn) -> tuple[list[torch.Tensor], list[int], list[int], list[int], int]:
    ops = draw(st.integers(1, 4))
    values, sizes, lo, hi = [], [], [], []
    ties = draw(st.booleans())
    for _ in range(ops):
        n = draw(st.integers(1, 300))
        generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
        # Ops on different scales: caps then hold some ops far from the global threshold.
        v = torch.randn(n, generator=generator) * draw(st.sampled_from([1.0, 1.0, 0.01, 100.0]))
        if ties:
            v = (v * 2).round()  # a handful of distinct values
        if draw(st.booleans()):
            v[torch.randint(n, (max(1, n // 10),), generator=generator)] = float("inf")
        values.append(v.to(draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))))
        sizes.append(draw(st.sampled_from([1, 1, 4, 16])))
        top = draw(st.integers(0, n))
        hi.append(top)
        lo.append(draw(st.integers(0, top)))
    reachable = sum(h * s for h, s in zip(hi, sizes, strict=True))
    target = draw(st.integers(0, reachable + 3))
    return values, sizes, lo, hi, target


def reference(
    values: list[torch.Tensor], sizes: list[int], lo: list[int], hi: list[int], target: int
) -> list[torch.Tensor]:
    ops = [
        OpBlocks(sortable_keys(v.to(torch.float64)), None, s, a, b)
        for v, s, a, b in zip(values, sizes, lo, hi, strict=True)
    ]
    counts = global_counts(ops, target)
    return [reference_lowest_k(op.keys, k) for op, k in zip(ops, counts, strict=True)]


@pytest.mark.parametrize("sample", [8, 64, 1 << 18])
@given(problem=problems())
def test_global_select_equals_the_reference(sample: int, problem: tuple) -> None:
    values, sizes, lo, hi, target = problem
    ops = [FastOp(v, s, a, b) for v, s, a, b in zip(values, sizes, lo, hi, strict=True)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fastselect, "GLOBAL_SAMPLE", sample)
        patch.setattr(fastselect, "LOCAL_SAMPLE", max(4, sample // 4))
        try:
            expected = reference(values, sizes, lo, hi, target)
        except ImpossibleTargetError:
            with pytest.raises(ImpossibleTargetError):
                global_select(ops, target)
            return
        got = [~keep for keep in global_select(ops, target)]
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)


@pytest.mark.parametrize("sample", [4, 1 << 14])
@given(data=st.data())
def test_lowest_k_equals_the_reference(sample: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 2000))
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    values = torch.randn(n, generator=generator)
    if data.draw(st.booleans()):
        values = values.round()
    k = data.draw(st.integers(0, n))
    expected = reference_lowest_k(sortable_keys(values), k)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fastselect, "LOCAL_SAMPLE", sample)
        assert torch.equal(fastselect.lowest_k(values, k), expected)


def test_large_problem_matches_a_full_sort() -> None:
    generator = torch.Generator().manual_seed(7)
    values = [torch.randn(n, generator=generator) for n in (300_000, 200_000, 50_000)]
    ops = [FastOp(v, 1, 0, int(0.98 * v.numel())) for v in values]
    got = [~keep for keep in global_select(ops, 440_000)]
    order = torch.sort(torch.cat(values), stable=True).indices[:440_000]
    chosen = torch.zeros(550_000, dtype=torch.bool)
    chosen[order] = True
    assert torch.equal(torch.cat(got), chosen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ops_held_by_their_caps_cost_one_pass_and_match_the_reference(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BERT's fc2 layers: smaller weights than the rest, so a global threshold would remove
    more than the 0.98 cap allows. They are bracketed around their own cap-th score and
    settled in the same single pass as every other op."""
    generator = torch.Generator().manual_seed(11)
    scales = [1.0, 1.0, 0.25, 1.0, 0.25]
    values = [
        (torch.rand(n, generator=generator) * s).to(dtype)
        for n, s in zip((200_000, 150_000, 300_000, 100_000, 250_000), scales, strict=True)
    ]
    hi = [int(0.98 * v.numel()) for v in values]
    lo = [int(0.1 * v.numel()) for v in values]
    target = int(0.8 * sum(v.numel() for v in values))
    passes = []
    original = fastselect._count_pass

    def counted(*args: object, **kwargs: object) -> object:
        passes.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fastselect, "_count_pass", counted)
    ops = [FastOp(v, 1, a, b) for v, a, b in zip(values, lo, hi, strict=True)]
    got = [~keep for keep in global_select(ops, target)]
    assert len(passes) == len(values)
    expected = reference(values, [1] * len(values), lo, hi, target)
    assert [int(g.sum()) for g in got][2] == hi[2]  # the small-scale ops are held by the cap
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)
