"""INC's 2-D view of a weight, and back: the view NxM tiles and N:M groups are laid on.

Linear ``(out, in)`` as is; Conv ``(out, in, *kernel)`` permuted to ``(out, *kernel, in)``
and flattened to ``(out, prod(kernel) * in)``, so the input channel varies fastest (INC
permutes ``(0, 2, 3, 1)`` then reshapes; Conv1d ``(0, 2, 1)``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_2d(weight: Tensor) -> Tensor:
    """INC's 2-D view of a Linear or Conv weight: ``(out, prod(kernel) * in)``, in fastest."""
    if weight.dim() <= 2:
        return weight
    order = (0, *range(2, weight.dim()), 1)
    return weight.permute(order).reshape(weight.shape[0], -1)


def from_2d(view: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of :func:`to_2d` for a weight of ``shape``."""
    if len(shape) <= 2:
        return view.reshape(shape)
    out, inp, *kernel = shape
    permuted = view.reshape(out, *kernel, inp)
    last = len(shape) - 1
    return permuted.permute(0, last, *range(1, last))
