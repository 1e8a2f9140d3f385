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


def head_runs_of_a_pass(
    model: nn.Module, calls: list[Call], ops: dict[str, nn.Module], head: nn.Module
) -> int:
    """Run :func:`model_pass` with early stops; check every op's statistics against full
    forwards and return how many batches reached ``head``."""
    expected = full_forward_statistics(model, ops, calls)
    runs = count_calls(head)
    with torch.no_grad():
        collector = model_pass(model, calls, ops, {n: NEEDS for n in ops})
    for name in ops:
        got = collector.results(name)
        assert torch.equal(got["input_norms"], expected[name]["input_norms"]), name
        assert torch.equal(got["hessian"], expected[name]["hessian"]), name
    return runs[0]


def test_the_early_stopped_pass_gives_the_statistics_of_full_forwards() -> None:
    model = llama(layers=2).eval()
    generator = torch.Generator().manual_seed(0)
    calls = [
        Call((torch.randint(0, 128, (2, 9), generator=generator),), {"use_cache": False})
        for _ in range(5)
    ]
    # only the first batch (which learns the ops' order) reaches the head
    assert head_runs_of_a_pass(model, calls, linears(model), model.lm_head) == 1


def signed_batches(signs: list[float]) -> list[Call]:
    """Batches whose first value has the sign given (it chooses a branch below)."""
    return [Call((torch.rand(3, 4) * s + 0.1 * s,), {}) for s in signs]


class Branching(nn.Module):
    """Two Linears, ``a`` and ``b``, and a head. ``twice``: ``a`` applied twice, ``b``
    unused. ``sometimes``: ``a``, then ``b`` only on batches whose first value is positive.
    ``reordered``: ``a`` then ``b`` on those batches, ``b`` then ``a`` on the others."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        with torch.no_grad():  # the identity: ``a`` keeps the sign that picks the branch
            self.a.weight.copy_(torch.eye(4))
            self.a.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        positive = float(x.flatten()[0]) > 0
        if self.kind == "twice":
            return self.head(self.a(self.a(x)))
        if self.kind == "sometimes":
            x = self.a(x)
            return self.head(self.b(x) if positive else x)
        return self.head(self.b(self.a(x)) if positive else self.a(self.b(x)))


def test_ops_that_run_twice_are_never_stopped_early() -> None:
    model = Branching("twice")
    assert head_runs_of_a_pass(model, signed_batches([1.0] * 4), {"a": model.a}, model.head) == 4


def test_an_op_missing_from_a_batch_lets_that_batch_run_to_the_end() -> None:
    model = Branching("sometimes")
    calls = signed_batches([1.0, -1.0, 1.0, -1.0, 1.0])  # b runs on batches 0, 2 and 4
    # batches 0 (which learns the order), 1 and 3 (b never ran) run in full
    assert head_runs_of_a_pass(model, calls, {"a": model.a, "b": model.b}, model.head) == 3


def test_a_batch_that_reaches_the_last_op_first_runs_to_the_end() -> None:
    model = Branching("reordered")
    calls = signed_batches([1.0, -1.0, 1.0, -1.0])
    # only batch 2 ends early (at ``b``, after ``a`` ran)
    assert head_runs_of_a_pass(model, calls, {"a": model.a, "b": model.b}, model.head) == 3
