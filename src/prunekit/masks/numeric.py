"""The numeric rules of block scores, each written once: the float type they are worked in,
and integer keys that sort exactly like them."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def working_dtype(dtypes: Iterable[torch.dtype]) -> torch.dtype:
    """float64 when any of ``dtypes`` is float64 (it stays exact), else float32: block sums
    and means of half-precision scores are taken in float32, so that blocks do not tie
    merely because bf16 rounded their means, and comparisons run narrow where they can."""
    return torch.float64 if any(d == torch.float64 for d in dtypes) else torch.float32


def sortable_keys(scores: Tensor) -> Tensor:
    """Integers that order exactly like the float ``scores`` (float64 -> int64, every other
    float -> int32 through float32, which holds bf16 and fp16 exactly). ``-0.0`` equals
    ``0.0``; NaN must have been rejected before."""
    scores = scores + 0.0  # a fresh tensor, and -0.0 becomes +0.0
    if scores.dtype == torch.float64:
        bits = scores.view(torch.int64)
        return bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)
    bits = scores.to(torch.float32).view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def lowest_key(keys: Tensor) -> int:
    """A key below every real score's key (weights or blocks a pre-mask removed go first)."""
    return int(torch.iinfo(keys.dtype).min)
