"""iter_masks: the same masks as get_masks, one op at a time, with scores made on demand."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator, Mapping

import pytest
import torch
from torch import nn

import prunekit as pk


class OnDemandScores(Mapping[str, torch.Tensor]):
    """|w| computed at every access, nothing kept: what a 7B model needs."""

    def __init__(self, modules: dict[str, nn.Module], ties: bool = False) -> None:
        self.modules = modules
        self.ties = ties
        self.reads = 0

    def __getitem__(self, name: str) -> torch.Tensor:
        self.reads += 1
        scores = self.modules[name].weight.detach().abs()
        return (scores * 50).round().to(torch.bfloat16) if self.ties else scores

    def __iter__(self) -> Iterator[str]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)


def model() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"a": nn.Linear(64, 128), "b": nn.Linear(128, 32), "c": nn.Conv2d(8, 16, 3)}


@pytest.mark.parametrize("spec", ["1x1", "4x1", "channelx1", "2:4", "filter", "weight"])
@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("ties", [False, True])
def test_iter_masks_equals_get_masks(spec: str, scope: str, ties: bool) -> None:
    modules = model()
    if spec in {"filter"}:
        modules = {"c": modules["c"], "d": nn.Conv2d(4, 8, 3)}
    target = 0.5 if spec == "2:4" else 0.7
    pattern = pk.get_pattern(
        {"pattern": spec, "pruning_scope": scope, "target_sparsity": target}, modules
    )
    scores = OnDemandScores(modules, ties)
    expected = pattern.get_masks({n: scores[n] for n in modules}, target)
    seen = []
    for name, mask in pattern.iter_masks(scores, target):
        seen.append(name)
        assert torch.equal(mask, expected[name]), (spec, scope, name)
    assert seen == list(modules)
    assert scores.reads > len(modules)  # scores were computed again, not kept


def test_iter_masks_applied_in_place_one_op_at_a_time() -> None:
    modules = model()
    pattern = pk.get_pattern({"pattern": "4x1", "target_sparsity": 0.5}, modules)
    total = sum(m.weight.numel() for m in modules.values())
    scores = OnDemandScores(modules)
    masks = pattern.iter_masks(scores, 0.5)
    # The counting is done before the first mask, so applying masks in place while the
    # iterator runs cannot change the decision for later ops.
    with torch.no_grad():
        for name, mask in masks:
            modules[name].weight.mul_(mask)
    zeros = sum(int((m.weight == 0).sum()) for m in modules.values())
    assert zeros == round(0.5 * total)


@pytest.mark.parametrize("scope", ["global", "local", "per_output"])
def test_no_scores_outlive_the_pass_even_before_the_garbage_collector_runs(scope: str) -> None:
    """Streaming over an LLM reads each op's scores on demand; the last op's must not stay
    alive with the pass's bookkeeping (held in a reference cycle, it would be freed only when
    the collector runs: 0.17 GiB per decoder layer of a 7B model)."""
    modules = {f"l{i}": nn.Linear(32, 16, bias=False) for i in range(3)}
    made: list[weakref.ref[torch.Tensor]] = []

    class Scores(Mapping[str, torch.Tensor]):
        def __getitem__(self, name: str) -> torch.Tensor:
            value = modules[name].weight.detach().abs()
            made.append(weakref.ref(value))
            return value

        def __iter__(self) -> Iterator[str]:
            return iter(modules)

        def __len__(self) -> int:
            return len(modules)

    config = {"pattern": "1x1", "pruning_scope": scope, "target_sparsity": 0.5}
    pattern = pk.get_pattern(config, modules)
    gc.disable()
    try:
        removed = sum(int((~mask).sum()) for _, mask in pattern.iter_masks(Scores(), 0.5))
        assert removed == 3 * 32 * 16 // 2
        assert made and all(ref() is None for ref in made)
    finally:
        gc.enable()
