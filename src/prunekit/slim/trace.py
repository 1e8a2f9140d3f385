"""A model's computation as a graph of ATen ops, for the channel analysis.

``torch.export`` (non-strict: it runs the model's Python as written) traces the model on
``example_inputs`` into a graph whose nodes carry the shapes they produce and the module
they ran in; parameters and buffers become named inputs. That graph is what
:mod:`prunekit.slim.flow` follows; it is taken in eval mode (BatchNorm uses its running
statistics, dropout is off) on a copy of nothing: export does not change the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.export import ExportedProgram

from prunekit.errors import PrunekitError


class TraceError(PrunekitError, RuntimeError):
    """The model could not be traced on the example inputs (the op or the reason named)."""


@dataclass(frozen=True)
class ExampleInputs:
    """What the model is called with: positional and keyword arguments."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @classmethod
    def of(cls, example: Any) -> ExampleInputs:
        """From what a user passes: a tensor, a tuple of arguments, or a dict of keyword
        arguments (as a Hugging Face model takes them)."""
        if isinstance(example, ExampleInputs):
            return example
        if isinstance(example, Mapping):
            return cls((), dict(example))
        if isinstance(example, tuple):
            return cls(example, {})
        return cls((example,), {})

    def call(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)


def export(model: nn.Module, example: ExampleInputs) -> ExportedProgram:
    """The model's graph on ``example``, in eval mode (restored after)."""
    was_training = model.training
    kwargs = dict(example.kwargs)
    if _is_hugging_face(model) and "use_cache" not in kwargs:
        kwargs["use_cache"] = False  # a KV cache is not a tensor the graph can return
    model.eval()
    try:
        with torch.no_grad():
            return torch.export.export(model, example.args, kwargs, strict=False)
    except Exception as error:  # torch.export raises many kinds
        raise TraceError(
            f"cannot trace {type(model).__name__} on the example inputs "
            f"({type(error).__name__}: {str(error).splitlines()[0][:300]}); slimming needs a "
            "model torch.export can trace: give example_inputs the model accepts as it is"
        ) from error
    finally:
        model.train(was_training)


def _is_hugging_face(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return config is not None and hasattr(config, "use_cache")


def parameter_names(program: ExportedProgram) -> dict[str, str]:
    """Graph input name -> the parameter's or buffer's qualified name in the model."""
    signature = program.graph_signature
    names = dict(signature.inputs_to_parameters)
    names.update(signature.inputs_to_buffers)
    return names


def module_of(node: torch.fx.Node) -> str:
    """The qualified name of the innermost module a node ran in ('' at the top)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path: str = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L__self___", "")
