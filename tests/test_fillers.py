"""N2D2's fillers: random (exact count, seeded) and iter_nonstruct (exact target)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import prunekit as pk


@given(
    seed=st.integers(0, 2**40),
    target=st.sampled_from([0.0, 0.1, 0.5, 0.77, 0.9]),
    out=st.integers(1, 12),
    inp=st.integers(1, 12),
)
def test_random_has_the_exact_count_and_is_reproducible(
    seed: int, target: float, out: int, inp: int
) -> None:
    fc = nn.Linear(inp, out)
    config = {
        "pattern": "random",
        "pruning_scope": "local",
        "seed": seed,
        "target_sparsity": 0.1,
        "max_sparsity_ratio_per_op": 1.0,
    }
    scores = {"fc": torch.rand(out, inp)}
    first = pk.get_pattern(config, {"fc": fc}).get_masks(scores, target)["fc"]
    again = pk.get_pattern(config, {"fc": fc}).get_masks({"fc": torch.rand(out, inp)}, target)["fc"]
    assert int((~first).sum()) == round(target * out * inp)
    assert torch.equal(first, again)  # same seed, same mask, whatever the scores


def test_random_differs_across_seeds_and_ops() -> None:
    modules = {"a": nn.Linear(20, 20), "b": nn.Linear(20, 20)}
    scores = {n: torch.rand(20, 20) for n in modules}

    def masks(seed: int) -> dict[str, torch.Tensor]:
        return pk.get_pattern(
            {"pattern": "random", "pruning_scope": "local", "seed": seed}, modules
        ).get_masks(scores, 0.5)

    one, two = masks(1), masks(2)
    assert not torch.equal(one["a"], two["a"])
    assert not torch.equal(one["a"], one["b"])


def test_random_global_scope_exact_total() -> None:
    modules = {"a": nn.Linear(10, 10), "b": nn.Conv2d(3, 4, 3)}
    scores = {n: m.weight.detach().abs() for n, m in modules.items()}
    masks = pk.get_pattern({"pattern": "random", "seed": 5}, modules).get_masks(scores, 0.3)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.3 * 208)


def test_iter_nonstruct_removes_exactly_the_target_lowest_first() -> None:
    fc = nn.Linear(5, 2)
    scores = torch.tensor([[0.05, 0.31, 0.12, 0.5, 0.29], [0.9, 0.01, 0.33, 0.27, 0.6]])
    pattern = pk.get_pattern(
        {"pattern": "iter_nonstruct", "pruning_scope": "local", "delta": 0.1}, {"fc": fc}
    )
    mask = pattern.get_masks({"fc": scores}, 0.4)["fc"]  # 4 of 10
    # N2D2 would remove < 0.1, < 0.2, < 0.3 (5 weights: overshoot); we stop at exactly 4.
    assert mask.tolist() == [[False, True, False, True, True], [True, False, True, False, True]]
    assert pattern.last_steps == {"fc": 3}
    one_by_one = pk.get_pattern({"pattern": "1x1", "pruning_scope": "local"}, {"fc": fc})
    assert torch.equal(mask, one_by_one.get_masks({"fc": scores}, 0.4)["fc"])


def test_iter_nonstruct_delta_is_validated() -> None:
    with pytest.raises(pk.ConfigError, match="delta: Input should be greater than 0"):
        pk.load_config({"pattern": "iter_nonstruct", "delta": 0})
