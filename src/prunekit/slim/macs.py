"""Multiply-accumulates of a traced forward pass, from the shapes in its graph.

Counted: Linear and conv layers, matrix products and attention (``q @ k`` and ``attn @ v``).
Elementwise ops, norms and pooling are left out: they are a small share of a forward and
not what slimming changes.
"""

from __future__ import annotations

import math

from torch import Tensor
from torch.export import ExportedProgram
from torch.fx import Node


def _shape(arg: object) -> tuple[int, ...]:
    value = arg.meta.get("val") if isinstance(arg, Node) else None
    return tuple(int(s) for s in value.shape) if isinstance(value, Tensor) else ()


def macs(program: ExportedProgram) -> int:
    """The multiply-accumulates of one forward pass of ``program`` on its example inputs."""
    total = 0
    for node in program.graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", "").split(".")[0]
        out = _shape(node)
        if name == "linear":
            total += math.prod(out) * _shape(node.args[1])[1]
        elif name == "addmm":
            total += math.prod(out) * _shape(node.args[1])[-1]
        elif name in {"conv1d", "conv2d", "conv3d", "convolution", "conv_transpose2d"}:
            weight = _shape(node.args[1])
            total += math.prod(out) * math.prod(weight[1:])
        elif name in {"matmul", "bmm", "mm"}:
            total += math.prod(out) * _shape(node.args[0])[-1]
        elif name == "scaled_dot_product_attention":
            q, k = _shape(node.args[0]), _shape(node.args[1])
            total += 2 * math.prod(q[:-1]) * k[-2] * q[-1]
    return total
