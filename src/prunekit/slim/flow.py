"""Which channels must be removed together: the channel flow of an exported graph.

Each op of the graph (in order) is read for what it does to channels:

* **makers** (a Linear's or conv's output, an embedding) hand out fresh channel ids; their
  weight rows and bias are the channels' *producers*;
* **users** (a Linear's or conv's input) take ids in: their weight columns are the
  channels' *consumers*;
* **per-channel ops** (BatchNorm, a depthwise conv, activations, dropout, pooling over
  space) pass ids through; their per-channel parameters are *followers*, sliced with them;
* **shape ops** move ids exactly (:func:`prunekit.slim.labels.moved`);
* **combining ops** (add, mul, cat, attention) tie the ids they meet position by position;
  a reshape that splits a channel dim into heads ties each head's channels together;
* everything that mixes channels in a way a smaller model could not reproduce exactly (a
  LayerNorm or RMSNorm over them, a softmax or a mean across them, an op prunekit does not
  know, the model's output) **pins** them: they are never removed, and the pin says why.

The result (:class:`Flow`) lists, per tied class of channels, its producers, consumers,
followers and pins; :mod:`prunekit.slim.slimming` decides from it what a smaller model may
drop.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from torch import Tensor
from torch.export import ExportedProgram
from torch.fx import Node

from prunekit.slim.labels import Label, Ties, compressed, moved
from prunekit.slim.trace import module_of, parameter_names

Role = Literal["producer", "consumer", "follower"]
Value = Label | None | list[Label | None]

# Ops that keep a tensor's shape and act on each position alone (or keep its values).
_ELEMENTWISE = {
    "relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardtanh", "hardtanh_",
    "hardswish", "hardsigmoid", "leaky_relu", "elu", "selu", "mish", "softplus", "dropout",
    "clone", "contiguous", "alias", "detach", "to", "_to_copy", "neg", "abs", "exp", "log",
    "sqrt", "rsqrt", "pow", "sin", "cos", "erf", "reciprocal", "square", "lift_fresh_copy",
    "type_as", "gelu_", "silu_", "relu6", "logit", "clamp", "clamp_min", "clamp_max",
    "feature_dropout", "alpha_dropout",
}  # fmt: skip
# Combining ops that meet tensors position by position (with broadcasting).
_BINARY = {"add", "sub", "mul", "div", "where", "maximum", "minimum", "rsub", "true_divide"}
# Ops that only rearrange positions: applied to the ids themselves.
_SHAPE = {
    "view", "reshape", "_unsafe_view", "flatten", "unflatten", "unsqueeze", "squeeze",
    "permute", "transpose", "t", "expand", "repeat", "slice", "select", "narrow",
    "movedim", "repeat_interleave", "swapaxes", "swapdims",
}  # fmt: skip
_SPLIT = {"split", "split_with_sizes", "chunk", "unbind", "tensor_split"}
_REDUCE = {"mean", "sum", "amax", "amin", "var", "std", "prod", "logsumexp", "norm", "max", "min"}
_NORMALIZE = {"softmax", "_softmax", "log_softmax", "_log_softmax"}
_POOL = {
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "avg_pool1d",
    "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
    "adaptive_max_pool2d", "max_pool2d_with_indices", "_adaptive_avg_pool2d",
}  # fmt: skip
_NOTHING = {"_assert_tensor_metadata", "arange", "zeros", "ones", "full", "empty", "new_ones"}


@dataclass
class Member:
    """A parameter's (or buffer's) slice along ``dim`` that goes with channels: position i
    of that dim goes with channel ``ids[i]``."""

    name: str  # qualified name in the model, e.g. "layer1.0.conv1.weight"
    dim: int
    ids: Tensor
    role: Role
    op: str  # the module it belongs to (for messages)


@dataclass
class Flow:
    """Channels of a traced model and what goes with them."""

    ties: Ties
    members: list[Member] = field(default_factory=list)
    pins: list[tuple[Tensor, str]] = field(default_factory=list)
    # Positions of a dim that must all stay: ids (positions x channels), and why.
    keeps: list[tuple[Tensor, str]] = field(default_factory=list)

    def pin(self, ids: Tensor, why: str) -> None:
        if ids.numel():
            self.pins.append((ids.reshape(-1), why))


class _Walker:
    """Reads an exported graph node by node into a :class:`Flow`."""

    def __init__(self, program: ExportedProgram) -> None:
        self.program = program
        self.names = parameter_names(program)
        self.flow = Flow(Ties())
        self.values: dict[Node, Value] = {}

    # -- helpers ------------------------------------------------------------------------------
    def label(self, arg: Any) -> Label | None:
        value = self.values.get(arg) if isinstance(arg, Node) else None
        return value if isinstance(value, Label) else None

    def shape(self, arg: Any) -> tuple[int, ...]:
        value = arg.meta.get("val") if isinstance(arg, Node) else None
        return tuple(int(s) for s in value.shape) if isinstance(value, Tensor) else ()

    def param(self, arg: Any) -> str | None:
        """The qualified name of the parameter or buffer ``arg`` is, if it is one."""
        if isinstance(arg, Node) and arg.op == "placeholder":
            return self.names.get(arg.name)
        return None

    def member(self, arg: Any, dim: int, ids: Tensor, role: Role, node: Node) -> None:
        name = self.param(arg)
        if name is not None:
            self.flow.members.append(Member(name, dim, ids, role, module_of(node)))

    def pin_inputs(self, node: Node, why: str) -> None:
        for arg in _tensor_args(node):
            found = self.label(arg)
            if found is not None:
                self.flow.pin(
                    found.ids(), f"{why} ({_op(node)} in {module_of(node) or 'the model'})"
                )

    # -- the walk -----------------------------------------------------------------------------
    def run(self) -> Flow:
        for node in self.program.graph_module.graph.nodes:
            if node.op == "call_function":
                self.values[node] = self.visit(node)
            elif node.op == "output":
                for arg in _flat(node.args):
                    found = self.label(arg)
                    if found is not None:
                        self.flow.pin(found.ids(), "they reach the model's output")
        return self.flow

    def visit(self, node: Node) -> Value:
        name = _op(node)
        if node.target is operator.getitem:
            source = node.args[0]
            value = self.values.get(source) if isinstance(source, Node) else None
            return value[_int(node.args[1])] if isinstance(value, list) else None
        handler = _HANDLERS.get(name)
        if handler is not None:
            return handler(self, node)
        if name in _ELEMENTWISE:
            return self.label(node.args[0])
        if name in _BINARY:
            return self.binary(node)
        if name in _SHAPE:
            return self.reshape(node)
        if name in _SPLIT:
            return self.split(node)
        if name in _REDUCE:
            return self.reduce(node)
        if name in _NORMALIZE:
            return self.normalize(node)
        if name in _POOL:
            return self.pool(node)
        if name not in _NOTHING:
            self.pin_inputs(node, "an op the channel analysis does not know")
        return None

    # -- passing ids along --------------------------------------------------------------------
    def reshape(self, node: Node) -> Value:
        found = self.label(node.args[0])
        if found is None:
            return None
        result = moved(found, self.shape(node.args[0]), lambda ids: _same_op(node, ids))
        assert isinstance(result, Tensor)
        self.tie_heads(found, result, node)
        return self.relabel(compressed(result), found, node)

    def relabel(self, new: Label | None, old: Label, node: Node) -> Label | None:
        """``new``, or (when a shape op left one channel's values alone) a pin."""
        if new is None:
            self.flow.pin(
                old.ids(),
                f"a single channel taken apart ({_op(node)} in {module_of(node) or 'the model'})",
            )
        return new

    def tie_heads(self, old: Label, ids: Tensor, node: Node) -> None:
        """A reshape that splits one labelled dim into two that both carry channels (a
        Linear's features into heads x head_dim): a smaller model keeps the split uniform,
        so each head's channels go together."""
        new = compressed(ids)
        if new is None or len(old.dims) != 1 or len(new.dims) < 2:
            return
        heads = new.index.reshape(new.index.shape[0], -1)
        if heads.shape[1] > 1:
            self.flow.ties.tie(heads[:, :-1], heads[:, 1:])

    def split(self, node: Node) -> Value:
        found = self.label(node.args[0])
        if found is None:
            return None
        parts = moved(found, self.shape(node.args[0]), lambda ids: _same_op(node, ids))
        assert isinstance(parts, (tuple, list))
        return [self.relabel(compressed(part), found, node) for part in parts]

    def binary(self, node: Node) -> Value:
        """Positions meet: ids in the same place are tied; a parameter in line with the
        channels follows them; any other tensor in line with them keeps them."""
        out_shape = self.shape(node)
        labelled = []
        for arg in _tensor_args(node):
            found = self.label(arg)
            if found is not None:
                aligned = self.aligned(found, self.shape(arg), out_shape)
                if aligned is None:
                    self.flow.pin(found.ids(), f"broadcast across channels ({_op(node)})")
                else:
                    labelled.append(aligned)
        if not labelled:
            return None
        first = labelled[0]
        for other in labelled[1:]:
            if other.dims != first.dims or other.index.shape != first.index.shape:
                for label in labelled:
                    self.flow.pin(label.ids(), f"channels meet on different dims ({_op(node)})")
                return None
            self.flow.ties.tie(first.index, other.index)
        for arg in _tensor_args(node):
            if self.label(arg) is None:
                self.in_line(arg, first, out_shape, node)
        return first

    def aligned(
        self, label: Label, shape: tuple[int, ...], out_shape: tuple[int, ...]
    ) -> Label | None:
        """``label`` in the output's dims (broadcast aligns shapes from the right); None if a
        labelled dim is broadcast (size 1 against a larger output)."""
        offset = len(out_shape) - len(shape)
        dims = tuple(d + offset for d in label.dims)
        if any(out_shape[d] != shape[d - offset] for d in dims):
            return None
        return Label(dims, label.index)

    def in_line(self, arg: Any, label: Label, out_shape: tuple[int, ...], node: Node) -> None:
        """An unlabelled operand meets labelled positions: a parameter covering exactly one
        labelled dim follows its channels; anything else in line with labelled dims makes
        those dims keep every position."""
        shape = self.shape(arg)
        offset = len(out_shape) - len(shape)
        covered = [
            d for d in label.dims if d - offset >= 0 and shape[d - offset] == out_shape[d] > 1
        ]
        if not covered:
            return
        if self.param(arg) is not None and label.dims == tuple(covered) and len(covered) == 1:
            self.member(arg, covered[0] - offset, label.index, "follower", node)
            return
        for d in covered:
            axis = label.dims.index(d)
            per_position = label.index.movedim(axis, 0).reshape(label.index.shape[axis], -1)
            self.flow.keeps.append(
                (
                    per_position,
                    f"{_op(node)} in {module_of(node) or 'the model'} adds a tensor "
                    f"that spans them",
                )
            )

    def reduce(self, node: Node) -> Value:
        found = self.label(node.args[0])
        if found is None:
            return None
        shape = self.shape(node.args[0])
        dims = _dims_arg(node, len(shape))
        if set(found.dims) & set(dims):
            self.flow.pin(
                found.ids(),
                f"reduced across channels ({_op(node)} in "
                f"{module_of(node) or 'the model'}: a norm or mean over them)",
            )
        ids = found.channel_map(shape)
        keepdim = (
            bool(node.args[2])
            if len(node.args) > 2 and isinstance(node.args[2], bool)
            else bool(node.kwargs.get("keepdim", False))
        )
        for d in sorted(dims, reverse=True):
            ids = ids.narrow(d, 0, 1) if keepdim else ids.select(d, 0)
        return compressed(ids) if not set(found.dims) & set(dims) else None

    def normalize(self, node: Node) -> Value:
        found = self.label(node.args[0])
        if found is not None:
            dim = _int(node.args[1]) % len(self.shape(node.args[0]))
            if dim in found.dims:
                self.flow.pin(found.ids(), f"a softmax across channels ({module_of(node)})")
        return found

    def pool(self, node: Node) -> Value:
        found = self.label(node.args[0])
        if found is None:
            return [None, None] if "indices" in _op(node) else None
        if found.dims != (1,):
            self.pin_inputs(node, "pooling over channel positions")
            return None
        return [found, None] if "indices" in _op(node) else found

    # -- makers and users ---------------------------------------------------------------------
    def linear(self, node: Node) -> Value:
        x, weight = node.args[0], node.args[1]
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        self.use(x, weight, 1, len(self.shape(x)) - 1, node)
        return self.make(node, weight, 0, bias, len(self.shape(node)) - 1)

    def addmm(self, node: Node) -> Value:  # GPT-2's Conv1D: bias + x @ W, W stored (in, out)
        bias, x, weight = node.args[0], node.args[1], node.args[2]
        if self.param(weight) is None:
            return self.matmul(node)
        self.use(x, weight, 0, 1, node)
        return self.make(node, weight, 1, bias, 1)

    def use(self, x: Any, weight: Any, weight_dim: int, x_dim: int, node: Node) -> None:
        """``weight``'s ``weight_dim`` consumes ``x``'s channels along ``x_dim``."""
        found = self.label(x)
        if found is None:
            return
        ids = found.along(x_dim)
        if ids is None or self.param(weight) is None:
            self.flow.pin(
                found.ids(), f"used jointly with other dims ({_op(node)} in {module_of(node)})"
            )
            return
        self.member(weight, weight_dim, ids, "consumer", node)

    def make(self, node: Node, weight: Any, weight_dim: int, bias: Any, out_dim: int) -> Label:
        count = self.shape(node)[out_dim]
        ids = self.flow.ties.fresh(count)
        self.member(weight, weight_dim, ids, "producer", node)
        if bias is not None:
            self.member(bias, 0, ids, "follower", node)
        if self.param(weight) is None:  # weights computed in the graph: not sliceable
            self.flow.pin(ids, f"made from computed weights ({module_of(node)})")
        return Label((out_dim,), ids)

    def conv(self, node: Node) -> Value:
        x, weight = node.args[0], node.args[1]
        bias = node.args[2] if len(node.args) > 2 else None
        transposed, groups = _conv_kind(node)
        found = self.label(x)
        channels_in = self.shape(x)[1]
        out = self.shape(node)[1]
        if groups > 1 and groups == channels_in and out % channels_in == 0 and not transposed:
            return self.depthwise(node, found, weight, bias, out // channels_in)
        if groups > 1:
            self.pin_inputs(node, "a grouped convolution")
            label = self.make(node, weight, 0, bias, 1)
            self.flow.pin(label.ids(), f"a grouped convolution ({module_of(node)})")
            return label
        self.use(x, weight, 0 if transposed else 1, 1, node)
        return self.make(node, weight, 1 if transposed else 0, bias, 1)

    def depthwise(
        self, node: Node, found: Label | None, weight: Any, bias: Any, multiplier: int
    ) -> Value:
        """Each output channel reads one input channel: ids pass through (repeated for a
        channel multiplier); the filters follow them."""
        if found is None or found.along(1) is None:
            return self.make(node, weight, 0, bias, 1)
        ids = found.index.repeat_interleave(multiplier)
        self.member(weight, 0, ids, "follower", node)
        if bias is not None:
            self.member(bias, 0, ids, "follower", node)
        return Label((1,), ids)

    def batch_norm(self, node: Node) -> Value:
        found = self.label(node.args[0])
        if found is None:
            return None if _op(node) == "batch_norm" else [None, None, None]
        if found.along(1) is None:
            self.pin_inputs(node, "a BatchNorm over non-channel positions")
            return None
        for arg in node.args[1:5]:
            if arg is not None:
                self.member(arg, 0, found.index, "follower", node)
        return found if _op(node) == "batch_norm" else [found, None, None]

    def layer_norm(self, node: Node) -> Value:
        found = self.label(node.args[0])
        if found is None:
            return None
        rank = len(self.shape(node.args[0]))
        normalized = range(rank - len(cast(Sequence[int], node.args[1])), rank)
        if set(found.dims) & set(normalized):
            self.flow.pin(
                found.ids(),
                f"a LayerNorm across them ({module_of(node)}): removing one "
                "changes the others' mean and variance",
            )
        return found

    def group_norm(self, node: Node) -> Value:
        self.pin_inputs(node, "a GroupNorm across them")
        return None

    def embedding(self, node: Node) -> Value:
        weight = node.args[0]
        ids = self.flow.ties.fresh(self.shape(node)[-1])
        self.member(weight, 1, ids, "producer", node)
        return Label((len(self.shape(node)) - 1,), ids)

    # -- meeting on several dims ----------------------------------------------------------------
    def cat(self, node: Node) -> Value:
        """Concatenation: along a channel dim the ids line up one after another; along
        another dim (a class token before patch embeddings) every part carries the same
        channels, and an unlabelled part follows them (a parameter) or keeps them."""
        parts = list(cast(Sequence[Any], node.args[0]))
        out_shape = self.shape(node)
        dim = _int(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0))
        dim %= len(out_shape)
        labels = [self.label(part) for part in parts]
        known = next((found for found in labels if found is not None), None)
        if known is None:
            return None
        maps = []
        for part, found in zip(parts, labels, strict=True):
            shape = self.shape(part)
            if found is not None:
                maps.append(found.channel_map(shape))
            elif dim in known.dims or not shape[dim]:
                fresh = self.flow.ties.fresh(max(1, int(torch.tensor(shape).prod())))
                self.flow.pin(fresh, f"concatenated with no layer's channels ({module_of(node)})")
                maps.append(fresh[: int(torch.tensor(shape).prod())].reshape(shape))
            else:
                self.in_line(part, known, out_shape, node)
                sample = labels.index(known)
                line = (
                    maps[sample]
                    if sample < len(maps)
                    else known.channel_map(self.shape(parts[sample]))
                )
                maps.append(line.narrow(dim, 0, 1).expand(*shape).contiguous())
        return compressed(torch.cat(maps, dim))

    def matmul(self, node: Node) -> Value:
        """A product of two activations (attention without the fused op) ``(..., m, k) @
        (..., k, n)``: ids on the contracted and the batch dims meet; the result carries the
        right operand's channels (or the left's when only it has any)."""
        a, b = node.args[-2], node.args[-1]
        la, lb = self.label(a), self.label(b)
        sa, sb = self.shape(a), self.shape(b)
        if la is None and lb is None:
            return None
        if la is None or lb is None or len(sa) < 2 or sa[:-2] != sb[:-2]:
            self.pin_inputs(node, "a product the channel analysis cannot follow")
            return None
        ma, mb = la.channel_map(sa), lb.channel_map(sb)
        self.flow.ties.tie(ma[..., :1, :], mb[..., :, :1].transpose(-1, -2))  # contracted k
        self.flow.ties.tie(ma[..., :1, :1], mb[..., :1, :1])  # batch dims
        out = self.shape(node)
        right = mb[..., :1, :].expand(*out).contiguous()
        if compressed(right) is not None:
            return compressed(right)
        return compressed(ma[..., :, :1].expand(*out).contiguous())

    def attention(self, node: Node) -> Value:
        """Scaled dot-product attention over ``(B, H, T, D)``: q and k meet on every head
        and head position (key/value heads repeat for grouped-query attention), and each
        head's values go with its queries; the output carries the values' ids."""
        q, k, v = node.args[0], node.args[1], node.args[2]
        lq, lk, lv = self.label(q), self.label(k), self.label(v)
        if lq is None or lk is None or lv is None:
            self.pin_inputs(
                node, "attention whose query, key and value are not all layers' channels"
            )
            return None
        sq, sk, sv = self.shape(q), self.shape(k), self.shape(v)
        mq, mk, mv = lq.channel_map(sq), lk.channel_map(sk), lv.channel_map(sv)
        repeat = sq[1] // sk[1] if sk[1] else 1
        if repeat > 1:
            mk, mv = mk.repeat_interleave(repeat, dim=1), mv.repeat_interleave(repeat, dim=1)
        self.flow.ties.tie(mq[:, :, :1, :], mk[:, :, :1, :])
        self.flow.ties.tie(mq[:, :, :1, :1], mv[:, :, :1, :1])
        return compressed(mv)


def _same_op(node: Node, ids: Tensor) -> Any:
    """``node``'s own op applied to a tensor of channel ids in place of its first input."""
    target = cast(Callable[..., Any], node.target)
    return target(ids, *node.args[1:], **node.kwargs)


def _op(node: Node) -> str:
    """The ATen op's name without namespace and overload ("linear", "conv2d")."""
    target = node.target
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def _flat(items: Any) -> Iterator[Any]:
    if isinstance(items, (list, tuple)):
        for item in items:
            yield from _flat(item)
    elif isinstance(items, dict):
        for item in items.values():
            yield from _flat(item)
    else:
        yield items


def _tensor_args(node: Node) -> list[Node]:
    found = [arg for arg in _flat((node.args, node.kwargs)) if isinstance(arg, Node)]
    return [arg for arg in found if isinstance(arg.meta.get("val"), Tensor)]


def _conv_kind(node: Node) -> tuple[bool, int]:
    """(transposed, groups) of a convolution node, whichever ATen form it takes."""
    name, args = _op(node), node.args
    if name == "convolution":  # input, weight, bias, stride, padding, dilation, transposed,
        return bool(args[6]), _int(args[8])  # output_padding, groups
    if name.startswith("conv_transpose"):  # input, weight, bias, stride, padding,
        return True, _int(args[6]) if len(args) > 6 else 1  # output_padding, groups, dilation
    # input, weight, bias, stride, padding, dilation, groups
    return False, _int(args[6]) if len(args) > 6 else 1


def _int(arg: object) -> int:
    """A node argument that is a whole number (static shapes: always a Python int)."""
    return int(cast(int, arg))


def _dims_arg(node: Node, rank: int) -> list[int]:
    """The dims a reduction reduces (all when none is given)."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dims is None or isinstance(dims, bool):
        return list(range(rank))
    if isinstance(dims, int):
        return [dims % rank]
    return [int(d) % rank for d in cast(Sequence[int], dims)]


_HANDLERS: dict[str, Callable[[_Walker, Node], Value]] = {
    "linear": _Walker.linear,
    "addmm": _Walker.addmm,
    "conv1d": _Walker.conv,
    "conv2d": _Walker.conv,
    "conv3d": _Walker.conv,
    "convolution": _Walker.conv,
    "conv_transpose1d": _Walker.conv,
    "conv_transpose2d": _Walker.conv,
    "batch_norm": _Walker.batch_norm,
    "_native_batch_norm_legit_no_training": _Walker.batch_norm,
    "layer_norm": _Walker.layer_norm,
    "group_norm": _Walker.group_norm,
    "embedding": _Walker.embedding,
    "cat": _Walker.cat,
    "matmul": _Walker.matmul,
    "bmm": _Walker.matmul,
    "mm": _Walker.matmul,
    "scaled_dot_product_attention": _Walker.attention,
}


def channel_flow(program: ExportedProgram) -> Flow:
    """The channels of ``program`` and what goes with them."""
    return _Walker(program).run()
