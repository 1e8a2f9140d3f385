"""Attention modules keep the head counts their forward reads in step with their layers.

Hugging Face attention modules read some head counts from attributes (BERT's
``num_attention_heads`` and ``all_head_size``, GPT-2's ``num_heads`` and ``split_size``);
others derive them from the layers' shapes (LLaMA views with ``-1`` heads). After heads are
removed, :func:`head_attributes` says what each such attribute must become, from the
slimmed layers' widths and the unchanged head size; a grouped-query module must keep its
number of query heads per key/value head.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from prunekit.errors import PrunekitError


def _width(module: nn.Module | None, out: bool = True) -> int | None:
    """Output (or input) width of a Linear or a transposed Linear (Conv1D)."""
    if module is None:
        return None
    weight = getattr(module, "weight", None)
    if weight is None:
        return None
    if isinstance(module, nn.Linear):
        return int(weight.shape[0] if out else weight.shape[1])
    return int(weight.shape[1] if out else weight.shape[0])  # Conv1D stores (in, out)


def head_attributes(module: nn.Module) -> dict[str, Any]:
    """The attributes ``module`` (an attention block, its layers already slimmed) must take;
    empty for modules that are no attention or read no head count."""
    children = dict(module.named_children())
    head_dim = getattr(module, "head_dim", None) or getattr(module, "attention_head_size", None)
    if not isinstance(head_dim, int) or head_dim <= 0:
        return {}
    if "query" in children and "key" in children:  # BERT, ViT (older naming)
        width = _width(children["query"])
        assert width is not None
        found: dict[str, Any] = {"all_head_size": width} if hasattr(module, "all_head_size") else {}
        if hasattr(module, "num_attention_heads"):
            found["num_attention_heads"] = width // head_dim
        return found
    if "c_attn" in children:  # GPT-2: one fused layer makes q, k and v
        width = _width(children["c_attn"])
        assert width is not None
        found = {"split_size": width // 3} if hasattr(module, "split_size") else {}
        if hasattr(module, "num_heads"):
            found["num_heads"] = width // 3 // head_dim
        if hasattr(module, "embed_dim"):
            found["embed_dim"] = width // 3
        return found
    if "q_proj" in children and "k_proj" in children:  # LLaMA and its kin, ViT
        return _grouped(module, children, head_dim)
    return {}


def _grouped(module: nn.Module, children: dict[str, nn.Module], head_dim: int) -> dict[str, Any]:
    queries = (_width(children["q_proj"]) or 0) // head_dim
    values = (_width(children["k_proj"]) or 0) // head_dim
    found: dict[str, Any] = {}
    groups = getattr(module, "num_key_value_groups", None)
    if isinstance(groups, int) and values and queries != groups * values:
        raise PrunekitError(
            f"slimming would leave {queries} query heads for {values} key/value heads in "
            f"{type(module).__name__}, which needs {groups} per key/value head: remove whole "
            "key/value groups (the head pattern does)"
        )
    for name, value in (
        ("num_heads", queries),
        ("num_attention_heads", queries),
        ("num_key_value_heads", values),
    ):
        if isinstance(getattr(module, name, None), int):
            found[name] = value
    return found
