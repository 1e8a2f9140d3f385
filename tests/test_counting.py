"""The counting selection against the exact radix reference: same masks, always.

Small samples force the bracket to miss often, so the widening path is exercised too.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.errors import ImpossibleTargetError
from prunekit.masks.numeric import sortable_keys
from prunekit.masks.select import brackets
from prunekit.masks.select.counting import global_plan
from prunekit.masks.select.passes import Scratch, keep_all_but_lowest
from prunekit.masks.select.reference import KeyedOp, global_counts
from prunekit.masks.select.reference import lowest_k as reference_lowest_k
from prunekit.masks.select.scored import ScoredOp


def global_select(ops: list[ScoredOp], target: int) -> list[torch.Tensor]:
    """Every op's keep mask under global scope, as the engine makes them."""
    scratch = Scratch()
    plans = global_plan(ops, target, retain=True, scratch=scratch)
    return [plan.materialize(op, scratch) for plan, op in zip(plans, ops, strict=True)]


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
        if draw(st.booleans()):  # blocks a pre-mask removed score -inf
            v[torch.randint(n, (max(1, n // 10),), generator=generator)] = float("-inf")
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
        KeyedOp(sortable_keys(v.to(torch.float64)), None, s, a, b)
        for v, s, a, b in zip(values, sizes, lo, hi, strict=True)
    ]
    counts = global_counts(ops, target)
    return [reference_lowest_k(op.keys, k) for op, k in zip(ops, counts, strict=True)]


@pytest.mark.parametrize("sample", [8, 64, 1 << 18])
@given(problem=problems())
def test_global_select_equals_the_reference(sample: int, problem: tuple) -> None:
    values, sizes, lo, hi, target = problem
    ops = [ScoredOp(v, s, a, b) for v, s, a, b in zip(values, sizes, lo, hi, strict=True)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(brackets, "GLOBAL_SAMPLE", sample)
        patch.setattr(brackets, "LOCAL_SAMPLE", max(4, sample // 4))
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
        patch.setattr(brackets, "LOCAL_SAMPLE", sample)
        assert torch.equal(~keep_all_but_lowest(values, k), expected)


def test_large_problem_matches_a_full_sort() -> None:
    generator = torch.Generator().manual_seed(7)
    values = [torch.randn(n, generator=generator) for n in (300_000, 200_000, 50_000)]
    ops = [ScoredOp(v, 1, 0, int(0.98 * v.numel())) for v in values]
    got = [~keep for keep in global_select(ops, 440_000)]
    order = torch.sort(torch.cat(values), stable=True).indices[:440_000]
    chosen = torch.zeros(550_000, dtype=torch.bool)
    chosen[order] = True
    assert torch.equal(torch.cat(got), chosen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ops_held_by_their_caps_match_the_reference(dtype: torch.dtype) -> None:
    """BERT's fc2 layers: smaller weights than the rest, so a global threshold would remove
    more than the 0.98 cap allows. They are bracketed around their own cap-th score (how
    many passes that costs is measured by ``benchmarks/masks.py --engine``)."""
    generator = torch.Generator().manual_seed(11)
    scales = [1.0, 1.0, 0.25, 1.0, 0.25]
    values = [
        (torch.rand(n, generator=generator) * s).to(dtype)
        for n, s in zip((200_000, 150_000, 300_000, 100_000, 250_000), scales, strict=True)
    ]
    hi = [int(0.98 * v.numel()) for v in values]
    lo = [int(0.1 * v.numel()) for v in values]
    target = int(0.8 * sum(v.numel() for v in values))
    ops = [ScoredOp(v, 1, a, b) for v, a, b in zip(values, lo, hi, strict=True)]
    got = [~keep for keep in global_select(ops, target)]
    expected = reference(values, [1] * len(values), lo, hi, target)
    assert [int(g.sum()) for g in got][2] == hi[2]  # the small-scale ops are held by the cap
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)


def infinite(pattern: str) -> torch.Tensor:
    return torch.tensor([float("-inf") if c == "-" else float("inf") for c in pattern])


def test_infinite_candidates_count_when_the_bracket_is_open_above() -> None:
    """Scores of only -inf (blocks a pre-mask removed) and +inf, ops of three block sizes,
    two held by their lower caps: the sample brackets from -inf with no upper end, and
    +inf blocks are candidates of every op, also of one bracketed on its own. (The engine
    once dropped them there: 942 elements removed instead of the nearest, 918.)"""
    values = [
        infinite("-" * 22 + "++"),
        infinite("+" * 16),
        infinite("+--++++-++++++++-++++-++++-++++++---+--+"),
    ]
    sizes, lo, hi = [16, 40, 10], [22, 0, 11], [23, 15, 39]
    ops = [ScoredOp(v, s, a, b) for v, s, a, b in zip(values, sizes, lo, hi, strict=True)]
    got = [~keep for keep in global_select(ops, 926)]
    assert [int(g.sum()) for g in got] == [23, 11, 11]
    for g, e in zip(got, reference(values, sizes, lo, hi, 926), strict=True):
        assert torch.equal(g, e)
