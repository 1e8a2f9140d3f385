"""Calibration batches: what the model is called with, and what its first block receives.

``calibration_data`` is an iterable of model inputs, each a tensor (``model(x)``), a tuple of
positional arguments (``model(*x)``) or a dict of keyword arguments (``model(**x)``, as a
Hugging Face model takes ``{"input_ids": ..., "attention_mask": ...}``). It is read once.

Sequential calibration runs the repeated blocks one at a time, so it needs what the first
block is called with for each batch: a forward pre-hook on that block records its arguments
and stops the model there (nothing after the first block runs). The hidden states are its
first positional argument (or its ``hidden_states`` keyword); every other argument
(attention masks, rotary position embeddings) is passed again, as recorded, to every block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.errors import CalibrationError

HIDDEN = "hidden_states"


@dataclass(frozen=True)
class Call:
    """Positional and keyword arguments of one call."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @classmethod
    def of(cls, item: Any) -> Call:
        """From a calibration item: a tensor, a tuple of arguments or a dict of keywords."""
        if isinstance(item, Call):
            return item
        if isinstance(item, Mapping):
            return cls((), dict(item))
        if isinstance(item, tuple):
            return cls(item, {})
        return cls((item,), {})

    def run(self, module: nn.Module) -> Any:
        return module(*self.args, **self.kwargs)

    @property
    def hidden(self) -> Tensor:
        """The hidden states a block receives."""
        value = self.args[0] if self.args else self.kwargs.get(HIDDEN)
        assert isinstance(value, Tensor)  # checked when the call was recorded
        return value

    def with_hidden(self, hidden: Tensor) -> Call:
        """The same call on other hidden states."""
        if self.args:
            return Call((hidden, *self.args[1:]), self.kwargs)
        return Call((), {**self.kwargs, HIDDEN: hidden})

    def to(self, device: torch.device | None) -> Call:
        """Every tensor in the call moved to ``device`` (None: as they are)."""
        if device is None:
            return self
        return Call(_moved(self.args, device), _moved(self.kwargs, device))


def _moved(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_moved(v, device) for v in value)
    if isinstance(value, list):
        return [_moved(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    return value


def calls_of(data: Any) -> list[Call]:
    """The calibration items as calls, read once; an error naming what is wrong when there
    are none or ``data`` is not an iterable of inputs."""
    if isinstance(data, (Tensor, Mapping)) or not isinstance(data, Iterable):
        raise CalibrationError(
            f"calibration_data: expected an iterable of model inputs (a list of tensors, "
            f"tuples or dicts, or a DataLoader), got {type(data).__name__}; wrap a single "
            "batch in a list: calibration_data=[batch]"
        )
    calls = [Call.of(item) for item in data]
    if not calls:
        raise CalibrationError("calibration_data: no batch; give at least one model input")
    return calls


def first_output(output: Any) -> Tensor:
    """The hidden states a block returns: itself, the first item of a tuple, or the first
    value of a Hugging Face ``ModelOutput``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if isinstance(output, Mapping) and output:
        first = next(iter(output.values()))
        if isinstance(first, Tensor):
            return first
    raise CalibrationError(
        f"a block returned {type(output).__name__}; sequential calibration needs blocks that "
        "return their hidden states (a tensor, or a tuple that starts with it)"
    )


class _Stop(Exception):
    """Raised inside the first block's pre-hook: the rest of the model is not needed."""


@contextlib.contextmanager
def calibrating(model: nn.Module) -> Iterator[None]:
    """Eval mode, no autograd, and no key/value cache (a Hugging Face model would grow one
    across calls) while calibration runs; all put back after."""
    config = getattr(model, "config", None)
    cache = getattr(config, "use_cache", None)
    training = model.training
    if cache is not None:
        config.use_cache = False  # type: ignore[union-attr]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)
        if cache is not None:
            config.use_cache = cache  # type: ignore[union-attr]


def block_inputs(
    model: nn.Module, blocks: list[nn.Module], calls: list[Call], label: str
) -> list[Call]:
    """What ``blocks[0]`` is called with for every batch, the model stopped there. On the
    first batch the second block's call is recorded too and checked to be the first one's
    output with the same other arguments: the blocks must be chained, as sequential
    calibration feeds each block the previous one's output."""
    recorded: list[Call] = []
    chain: dict[str, Any] = {}

    def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        call = Call(tuple(args), dict(kwargs))
        if not (call.args and isinstance(call.args[0], Tensor)) and not isinstance(
            call.kwargs.get(HIDDEN), Tensor
        ):
            raise CalibrationError(
                f"{label}.0 was called without a tensor as its first argument or as "
                f"{HIDDEN!r}; sequential calibration cannot tell which argument carries the "
                "hidden states (set sequential: false)"
            )
        recorded.append(call)
        if len(recorded) > 1 or len(blocks) < 2:
            raise _Stop

    def output(module: nn.Module, args: Any, result: Any) -> None:
        chain["out"] = first_output(result)

    def second(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        chain["next"] = Call(tuple(args), dict(kwargs))
        raise _Stop

    handles = [blocks[0].register_forward_pre_hook(record, with_kwargs=True)]
    if len(blocks) > 1:
        handles += [
            blocks[0].register_forward_hook(output),
            blocks[1].register_forward_pre_hook(second, with_kwargs=True),
        ]
    try:
        for index, call in enumerate(calls):
            _run_until_stop(model, call, index, label)
            if index == 0 and len(blocks) > 1:
                _check_chained(recorded[0], chain, label)
                for handle in handles[1:]:
                    handle.remove()
    finally:
        for handle in handles:
            handle.remove()
    return recorded


def _run_until_stop(model: nn.Module, call: Call, index: int, label: str) -> None:
    try:
        call.run(model)
    except _Stop:
        return
    raise CalibrationError(
        f"calibration batch {index} ran through the model without calling {label}.0; give "
        "calibration data the model's forward sends through its blocks, or set sequential: "
        "false"
    )


def _check_chained(first: Call, chain: dict[str, Any], label: str) -> None:
    """The second block's call must be the first one's with its output as hidden states."""
    nxt = chain.get("next")
    out = chain.get("out")
    same_rest = nxt is not None and _same_arguments(first, nxt)
    if nxt is None or out is None or nxt.hidden is not out or not same_rest:
        raise CalibrationError(
            f"the blocks of {label!r} are not chained: {label}.1 is not called on the output "
            f"of {label}.0 with the same other arguments, so they cannot be calibrated one "
            "after another; name the repeated blocks with sequential_blocks, or set "
            "sequential: false"
        )


def _same_arguments(first: Call, second: Call) -> bool:
    """Whether two calls pass the same objects besides their hidden states."""
    a = first.with_hidden(torch.empty(0))
    b = second.with_hidden(torch.empty(0))
    if len(a.args) != len(b.args) or set(a.kwargs) != set(b.kwargs):
        return False
    pairs = [*zip(a.args[1:], b.args[1:], strict=True)]
    pairs += [(a.kwargs[k], b.kwargs[k]) for k in a.kwargs if k != HIDDEN]
    return all(_same(x, y) for x, y in pairs)


def _same(x: Any, y: Any) -> bool:
    """The same object, or containers of the same objects, or equal plain values."""
    if x is y:
        return True
    if isinstance(x, (tuple, list)) and isinstance(y, (tuple, list)):
        return len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y, strict=True))
    if isinstance(x, Tensor) or isinstance(y, Tensor):
        return False
    try:
        return bool(x == y)
    except Exception:  # an object whose == is not a plain answer
        return False
