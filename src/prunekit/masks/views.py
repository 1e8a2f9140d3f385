"""Views of a weight: INC's 2-D view the NxM tiles and N:M groups are laid on, and the
``(out, in)`` view of a transposed Linear.

INC's view: Linear ``(out, in)`` as is; Conv ``(out, in, *kernel)`` permuted to
``(out, *kernel, in)`` and flattened to ``(out, prod(kernel) * in)``, so the input channel
varies fastest (INC permutes ``(0, 2, 3, 1)`` then reshapes; Conv1d ``(0, 2, 1)``).

Hugging Face's ``Conv1D`` (GPT-2's attention and MLP layers) is a Linear whose weight is
stored ``(in, out)``. Patterns see it as ``(out, in)``, like every Linear
(:func:`is_transposed_linear`); scores come in and masks go out shaped like the weight.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn


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


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a Linear whose weight is stored ``(in, out)``: Hugging Face
    transformers' ``Conv1D`` (recognised by its name and its ``nf`` output width, so that
    prunekit needs no import of transformers)."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(weight, Tensor)
        and weight.dim() == 2
        and getattr(module, "nf", None) == weight.shape[1]
    )


class Transposed(Mapping[str, Tensor]):
    """``tensors`` with the ops in ``names`` seen through their transpose (no copy): a
    transposed Linear's scores or masks in the ``(out, in)`` view patterns work on."""

    def __init__(self, tensors: Mapping[str, Tensor], names: set[str]) -> None:
        self.tensors = tensors
        self.names = names

    def __getitem__(self, name: str) -> Tensor:
        value = self.tensors[name]
        return value.t() if name in self.names else value

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)
