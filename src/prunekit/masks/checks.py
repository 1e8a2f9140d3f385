"""Checks of what a pattern is given, before anything is computed: scores and pre-masks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from prunekit.errors import ScoreError


def check_inputs(
    shapes: Mapping[str, tuple[int, ...]],
    scores: Mapping[str, Tensor],
    pre_masks: Mapping[str, Tensor] | None = None,
) -> None:
    """Raise :class:`~prunekit.errors.ScoreError` unless ``scores`` has exactly the ops of
    ``shapes``, each a float tensor of its weight's shape without NaN, and ``pre_masks`` (if
    any) has bool masks of the same shapes for some of them. Reads each op's scores once."""
    if not isinstance(scores, Mapping):
        raise ScoreError(
            f"scores: expected a mapping of op name -> tensor, got {type(scores).__name__}"
        )
    _check_names("scores", scores, shapes, require_all=True)
    for name, shape in shapes.items():
        _check_scores(name, scores[name], shape)
    if pre_masks is None:
        return
    if not isinstance(pre_masks, Mapping):
        raise ScoreError(
            f"pre_masks: expected a mapping of op name -> bool tensor, got "
            f"{type(pre_masks).__name__}"
        )
    _check_names("pre_masks", pre_masks, shapes, require_all=False)
    for name, mask in pre_masks.items():
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise ScoreError(
                f"pre_masks[{name!r}]: expected a bool tensor, got "
                f"{getattr(mask, 'dtype', type(mask).__name__)}"
            )
        if tuple(mask.shape) != shapes[name]:
            raise ScoreError(
                f"pre_masks[{name!r}]: shape {tuple(mask.shape)} does not match "
                f"the weight's shape {shapes[name]}"
            )


def _check_scores(name: str, value: Any, shape: tuple[int, ...]) -> None:
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise ScoreError(
            f"scores[{name!r}]: expected a float tensor, got "
            f"{getattr(value, 'dtype', type(value).__name__)}"
        )
    if tuple(value.shape) != shape:
        raise ScoreError(
            f"scores[{name!r}]: shape {tuple(value.shape)} does not match "
            f"the weight's shape {shape}"
        )
    refuse_nan(name, value)


def refuse_nan(name: str, scores: Tensor) -> None:
    """Raise :class:`~prunekit.errors.ScoreError`, naming op ``name``, if ``scores`` has a
    NaN (no mask can rank it)."""
    # A sum is NaN if any element is (and when +inf meets -inf): cheap first test.
    if torch.isnan(scores.sum()) and bool(torch.isnan(scores).any()):
        count = int(torch.isnan(scores).sum())
        raise ScoreError(
            f"scores[{name!r}]: {count} NaN value(s); scores must be numbers (inf is allowed)"
        )


def _check_names(
    what: str, given: Mapping[str, Any], expected: Mapping[str, Any], *, require_all: bool
) -> None:
    names = set(given)  # iterated, never looked up: a mapping may compute its values
    missing = [n for n in expected if n not in names] if require_all else []
    extra = [n for n in given if n not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(map(repr, missing))}")
        if extra:
            parts.append(f"unexpected {', '.join(map(repr, extra))}")
        raise ScoreError(
            f"{what}: names do not match the pattern's ops ({'; '.join(parts)}); "
            f"expected {', '.join(map(repr, expected))}"
        )
