"""A statistics-only pass ends each batch once its last op has taken its input: the
statistics equal those of full forwards, the rest of the model is not run, and a model
whose ops run more than once or only on some batches is run to the end. (Sequential
pruning through such passes is checked against a by-hand Wanda in test_calibration.py.)"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from models import llama
from prunekit.training.batches import Call
from prunekit.training.sequential import model_pass
from prunekit.training.statistics import Collector

NEEDS = ("input_norms", "hessian")


def linears(model: nn.Module) -> dict[str, nn.Module]:
    return {
        n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and "layers" in n
    }


def full_forward_statistics(
    model: nn.Module, ops: Mapping[str, nn.Module], calls: list[Call]
) -> dict[str, dict[str, Tensor]]:
    """The statistics of every op with every batch run to the end (no early stop)."""
    with Collector(ops, {n: NEEDS for n in ops}) as collector, torch.no_grad():
        for call in calls:
            collector.start()
            call.run(model)
    return {n: {k: v.clone() for k, v in collector.results(n).items()} for n in ops}


def count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_the_early_stopped_pass_gives_the_statistics_of_full_forwards() -> None:
    model = llama(layers=2).eval()
    generator = torch.Generator().manual_seed(0)
    calls = [
        Call((torch.randint(0, 128, (2, 9), generator=generator),), {"use_cache": False})
        for _ in range(5)
    ]
    ops = linears(model)
    expected = full_forward_statistics(model, ops, calls)
    head = count_calls(model.lm_head)
    with torch.no_grad():
        collector = model_pass(model, calls, ops, {n: NEEDS for n in ops})
    assert head == [1]  # only the first batch (which learns the ops' order) reached the head
    for name in ops:
        got = collector.results(name)
        assert torch.equal(got["input_norms"], expected[name]["input_norms"]), name
        assert torch.equal(got["hessian"], expected[name]["hessian"]), name


class Twice(nn.Module):
    """One Linear applied twice per forward (a weight-tied loop), then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.shared(self.shared(x)))


class OnlySometimes(nn.Module):
    """``late`` runs only on batches whose first value is positive."""

    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Linear(4, 4)
        self.late = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.early(x)
        if float(x.flatten()[0]) > 0:
            x = self.late(x)
        return self.head(x)


def test_ops_that_run_twice_are_never_stopped_early() -> None:
    torch.manual_seed(0)
    model, calls = Twice(), [Call((torch.randn(3, 4),), {}) for _ in range(4)]
    ops = {"shared": model.shared}
    expected = full_forward_statistics(model, ops, calls)
    head = count_calls(model.head)
    with torch.no_grad():
        collector = model_pass(model, calls, ops, {"shared": NEEDS})
    assert head == [4]
    assert torch.equal(collector.results("shared")["hessian"], expected["shared"]["hessian"])


def test_an_op_missing_from_a_batch_lets_that_batch_run_to_the_end() -> None:
    torch.manual_seed(0)
    model = OnlySometimes()
    with torch.no_grad():
        model.early.weight.copy_(torch.eye(4))
        model.early.bias.zero_()
    signs = [1.0, -1.0, 1.0, -1.0, 1.0]  # late runs on batches 0, 2 and 4
    calls = [Call((torch.rand(3, 4) * s + 0.1 * s,), {}) for s in signs]
    ops = {"early": model.early, "late": model.late}
    expected = full_forward_statistics(model, ops, calls)
    head = count_calls(model.head)
    with torch.no_grad():
        collector = model_pass(model, calls, ops, {n: NEEDS for n in ops})
    assert head == [3]  # batches 0 (learning the order), 1 and 3 (late never ran) in full
    for name in ops:
        assert torch.equal(collector.results(name)["hessian"], expected[name]["hessian"]), name


class Reordered(nn.Module):
    """``first`` then ``second`` on batches whose first value is positive, else the other
    way round (the op that ended the first batch now comes first)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        if float(x.flatten()[0]) > 0:
            return self.head(self.second(self.first(x)))
        return self.head(self.first(self.second(x)))


def test_a_batch_that_reaches_the_last_op_first_runs_to_the_end() -> None:
    torch.manual_seed(0)
    model = Reordered()
    signs = [1.0, -1.0, 1.0, -1.0]
    calls = [Call((torch.rand(3, 4) * s + 0.1 * s,), {}) for s in signs]
    ops = {"first": model.first, "second": model.second}
    expected = full_forward_statistics(model, ops, calls)
    head = count_calls(model.head)
    with torch.no_grad():
        collector = model_pass(model, calls, ops, {n: NEEDS for n in ops})
    assert head == [3]  # only batch 2 ends early (at ``second``, after ``first`` ran)
    for name in ops:
        assert torch.equal(collector.results(name)["hessian"], expected[name]["hessian"]), name
