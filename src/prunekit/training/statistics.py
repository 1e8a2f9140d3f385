"""What calibration criteria read of each op's inputs, gathered with forward hooks.

A calibration criterion names the statistics it reads (``statistics=("input_norms",)``);
while calibration batches run through the model (or one block of it), a forward pre-hook on
every selected op feeds its input, flattened to ``(tokens, in_features)``, to each statistic
its criterion needs:

``input_norms``
    ``||X_j||_2`` over every calibration token, per input feature ``j`` (Wanda's activation
    norm, OWL's too), accumulated as sums of squares in float64 across batches; handed to
    the criterion shaped to broadcast against the weight as stored (``(1, in)`` for a
    Linear, ``(in, 1)`` for a transposed one).
``hessian``
    ``X^T X / tokens`` in float32, ``(in, in)`` (SparseGPT's layer Hessian, up to the
    factor 2 that cancels in its updates).

Ops called on the very same input tensor, one after another (a decoder's q, k and v; its
gate and up projections), share one statistic: computed once, held once (LLaMA-7B's three
4096x4096 float32 Hessians of q, k, v are one).

A pass that only gathers statistics need not finish a batch once the last op has taken its
input: with ``stop_early`` the collector learns the ops' order on the first batch and, on
later batches, ends the forward (:class:`StatisticsComplete`) at the last op's pre-hook when
every op has run exactly once, as on the first batch: a decoder layer's down projection (a
fifth of its matmuls) or a model's head is then never computed for nothing. A first batch
that calls an op twice turns the early stop off; a later batch that reaches the last op
before another runs to the end. (A model that would call an op again after the last one
only on later batches is beyond what this sees: calibration needs a model that runs the
same way on every batch, as the sharing check below says too.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from prunekit.errors import CalibrationError, UnsupportedModuleError
from prunekit.masks.views import is_transposed_linear


class StatisticsComplete(BaseException):
    """Raised from the last op's pre-hook: this batch's statistics are all taken.

    A ``BaseException``, like ``GeneratorExit``, so that a model's own ``except Exception``
    cannot swallow it and carry on with the forward."""


class Statistic(Protocol):
    """One op's running statistic of its inputs."""

    def add(self, rows: Tensor) -> None:
        """Take ``(tokens, in_features)`` more inputs."""
        ...

    def result(self) -> Tensor:
        """The statistic over every input taken so far."""
        ...


class InputNorms:
    """``||X_j||_2`` per input feature over every token: each batch's sums of squares in
    float32 (summed pairwise by torch, exact enough for a batch's thousands of tokens and
    twice as fast as float64 on the CPU), added up across batches in float64."""

    def __init__(self, features: int, device: torch.device) -> None:
        self.squares = torch.zeros(features, dtype=torch.float64, device=device)

    def add(self, rows: Tensor) -> None:
        self.squares += rows.float().square().sum(dim=0)

    def result(self) -> Tensor:
        return self.squares.sqrt().to(torch.float32)


class Hessian:
    """``X^T X / tokens`` in float32: the layer-wise Hessian of SparseGPT."""

    def __init__(self, features: int, device: torch.device) -> None:
        self.sum = torch.zeros(features, features, dtype=torch.float32, device=device)
        self.tokens = 0
        self._mean = False

    def add(self, rows: Tensor) -> None:
        x = rows.float()
        self.sum.addmm_(x.t(), x)
        self.tokens += rows.shape[0]

    def result(self) -> Tensor:
        if not self._mean:  # in place: a second (in, in) matrix would double the memory
            self.sum.div_(max(self.tokens, 1))
            self._mean = True
        return self.sum


STATISTICS: dict[str, Callable[[int, torch.device], Statistic]] = {
    "input_norms": InputNorms,
    "hessian": Hessian,
}


def in_features(name: str, module: nn.Module) -> int:
    """The input width of a Linear (or transposed Linear) op; other modules are refused,
    since their inputs are not rows of features (a convolution's are image patches)."""
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.Linear) and isinstance(weight, Tensor):
        return int(weight.shape[1])
    if is_transposed_linear(module) and isinstance(weight, Tensor):
        return int(weight.shape[0])
    raise UnsupportedModuleError(
        f"op {name!r} ({type(module).__name__}): calibration criteria and OWL read the "
        "inputs of Linear layers (and Hugging Face's Conv1D); leave it out of the config "
        "(excluded_op_names, or pruning_op_types: ['Linear'])"
    )


def check_statistic_names(criterion: str, names: Sequence[str]) -> None:
    """Refuse a criterion that declares a statistic prunekit does not gather."""
    unknown = [n for n in names if n not in STATISTICS]
    if unknown:
        raise CalibrationError(
            f"criterion {criterion!r} declares statistics {unknown}, which prunekit does not "
            f"gather; the statistics are: {', '.join(STATISTICS)}"
        )


class Collector:
    """Forward pre-hooks on ``ops`` (name -> module) feeding each op's inputs to the
    statistics ``needs[name]`` names; a context manager that removes its hooks on exit.

    Call :meth:`start` before each batch, so that sharing (ops called one after another on
    the same input tensor) is found on the first batch and checked on the others.
    ``stop_early``: the caller does not want the batch's outputs and catches
    :class:`StatisticsComplete` (see the module's docstring)."""

    def __init__(
        self,
        ops: Mapping[str, nn.Module],
        needs: Mapping[str, Sequence[str]],
        *,
        stop_early: bool = False,
    ) -> None:
        self.ops = {name: m for name, m in ops.items() if needs.get(name)}
        self.needs = {name: tuple(needs[name]) for name in self.ops}
        self.features = {name: in_features(name, m) for name, m in self.ops.items()}
        self.stats: dict[str, dict[str, Statistic]] = {}
        self.leader: dict[str, str] = {}  # op -> the op whose statistics it shares
        self._handles: list[RemovableHandle] = []
        self._last: tuple[Tensor | None, str] = (None, "")
        self._batches = 0
        self._stop_early = stop_early
        self._calls: dict[str, int] = {}  # this batch's calls per op
        self._final: str | None = None  # the op whose pre-hook may end a batch

    def __enter__(self) -> Collector:
        for name, module in self.ops.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._last = (None, "")

    def start(self) -> None:
        """A new batch begins (its first op's input is no other op's)."""
        if self._stop_early and self._batches == 1 and self._ran_once_each():
            self._final = next(reversed(self._calls))  # dicts keep the order of first calls
        self._last = (None, "")
        self._calls = {}
        self._batches += 1

    def _ran_once_each(self) -> bool:
        return len(self._calls) == len(self.ops) and all(n == 1 for n in self._calls.values())

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0] if args else None
            if not isinstance(x, Tensor) or x.shape[-1] != self.features[name]:
                raise CalibrationError(
                    f"op {name!r} was called with "
                    + (
                        f"an input of shape {tuple(x.shape)}"
                        if isinstance(x, Tensor)
                        else "no tensor"
                    )
                    + f"; calibration reads inputs whose last dim is its {self.features[name]} "
                    "input features"
                )
            self._take(name, x)
            self._calls[name] = self._calls.get(name, 0) + 1
            if name == self._final and self._ran_once_each():
                raise StatisticsComplete

        return hook

    def _take(self, name: str, x: Tensor) -> None:
        last, last_name = self._last
        same = last is x and self.needs.get(last_name) == self.needs[name]
        if name not in self.leader:
            self.leader[name] = self.leader[last_name] if same and self._batches <= 1 else name
        elif self.leader[name] != name and not (
            same and self.leader[last_name] == self.leader[name]
        ):
            raise CalibrationError(
                f"op {name!r} shared its input with {self.leader[name]!r} on the first "
                "calibration batch but not on a later one; calibration needs a model that "
                "runs the same way on every batch"
            )
        self._last = (x, name)
        if self.leader[name] != name:
            return  # its leader took this very input
        stats = self.stats.get(name)
        if stats is None:
            stats = self.stats[name] = {
                kind: STATISTICS[kind](self.features[name], x.device) for kind in self.needs[name]
            }
        rows = x.detach().reshape(-1, x.shape[-1])
        for statistic in stats.values():
            statistic.add(rows)

    def results(self, name: str) -> dict[str, Tensor]:
        """Op ``name``'s statistics (shared ones are the same tensors for every op)."""
        stats = self.stats.get(self.leader.get(name, name))
        if stats is None:
            raise CalibrationError(
                f"op {name!r} never ran on the calibration data, so it has no statistics; "
                "leave it out of the config or give calibration data that reaches it"
            )
        return {kind: statistic.result() for kind, statistic in stats.items()}

    def sharing(self, name: str) -> list[str]:
        """The other ops whose statistics are op ``name``'s (the same input tensor)."""
        leader = self.leader.get(name, name)
        return [op for op, lead in self.leader.items() if lead == leader and op != name]

    def release(self, done: set[str]) -> None:
        """Free the statistics every op sharing them is ``done`` with."""
        for leader in list(self.stats):
            if all(op in done for op, lead in self.leader.items() if lead == leader):
                del self.stats[leader]


def for_weight(module: nn.Module, statistics: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Statistics as a criterion receives them: ``input_norms`` shaped to broadcast
    against the weight as stored (``(1, in)``, or ``(in, 1)`` for a transposed Linear)."""
    shaped = dict(statistics)
    norms = shaped.get("input_norms")
    if norms is not None:
        shaped["input_norms"] = (
            norms.reshape(-1, 1) if is_transposed_linear(module) else norms.reshape(1, -1)
        )
    return shaped
