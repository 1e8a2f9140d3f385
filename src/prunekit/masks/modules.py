"""How masks live on a module (the Pruner's), so that removed weights stay removed on every
copy.

Chosen so that ``copy.deepcopy``, ``pickle``, ``torch.save``/``torch.load``,
``state_dict()``/``load_state_dict()`` and ``torch.compile`` keep working on the plain model:

* ``weight`` stays the module's own ``nn.Parameter`` (same class, same state-dict key);
  removed weights are zero in place, so the forward pass needs no arithmetic;
* the mask is a non-persistent bool buffer ``weight_mask`` (copied by deepcopy and pickle,
  left out of the model's ``state_dict`` so that plain models load it);
* a gradient hook multiplies the weight's gradient by the mask, so no optimizer step moves a
  removed weight. Tensor hooks are not copied by ``deepcopy`` or pickle (pytorch#37322), so
  a forward pre-hook (a module hook, which every copy keeps) attaches the gradient hook to
  whatever weight the module holds the first time it runs: a copy, a reloaded model or a
  model whose weight was replaced keeps its removed weights at zero when trained.

A model that carries masks can be pruned further: :func:`attached_masks` finds them (a new
``Pruner`` starts from them), and :func:`strip_masks` removes them, leaving the zeros baked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

MASK_BUFFER = "weight_mask"
BIAS_MASK_BUFFER = "bias_mask"
# On a weight: (its id when its gradient hook was added, the hook's handle). A copy of the
# weight lacks it (deepcopy) or holds another id (pickle), so it gets its own hook.
_HOOKED = "_prunekit_hooked"


class GradMask:
    """Gradient hook: removed weights get no gradient. A class, not a lambda, so that a
    model carrying it stays picklable."""

    def __init__(self, module: nn.Module, buffer: str) -> None:
        self.module = module
        self.buffer = buffer

    def __call__(self, grad: Tensor) -> Tensor:
        mask: Tensor = getattr(self.module, self.buffer)
        return grad * mask


class KeepMasked:
    """Forward pre-hook that gives the module's current weight (and bias, when its mask is
    kept) the gradient hook, if it has none yet: the weight of a copy or of a reloaded
    model is a new tensor without hooks."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, module: nn.Module, args: object) -> None:
        hook_gradients(module)


def hook_gradients(module: nn.Module) -> None:
    """Attach :class:`GradMask` to ``module``'s weight and masked bias unless they have it."""
    for name, buffer in (("weight", MASK_BUFFER), ("bias", BIAS_MASK_BUFFER)):
        tensor = getattr(module, name, None)
        if not isinstance(tensor, Tensor) or not hasattr(module, buffer):
            continue
        if _own_hook(tensor) is not None or not tensor.requires_grad:
            continue
        handle = tensor.register_hook(GradMask(module, buffer))  # type: ignore[no-untyped-call]
        setattr(tensor, _HOOKED, (id(tensor), handle))


def _own_hook(tensor: Tensor) -> RemovableHandle | None:
    """The handle of the gradient hook prunekit gave this very tensor, if any."""
    found = getattr(tensor, _HOOKED, None)
    if isinstance(found, tuple) and found[0] == id(tensor):
        handle: RemovableHandle = found[1]
        return handle
    return None


def attach(module: nn.Module, mask: Tensor, *, bias: bool) -> None:
    """Give ``module`` its mask buffer (and a bias mask when ``bias``), the pre-hook and the
    gradient hooks."""
    module.register_buffer(MASK_BUFFER, mask.clone(), persistent=False)
    module_bias = getattr(module, "bias", None)
    if bias and isinstance(module_bias, Tensor):
        module.register_buffer(
            BIAS_MASK_BUFFER, torch.ones_like(module_bias, dtype=torch.bool), persistent=False
        )
    if not any(isinstance(h, KeepMasked) for h in module._forward_pre_hooks.values()):
        module.register_forward_pre_hook(KeepMasked(module))
    hook_gradients(module)


def carries_masks(module: nn.Module) -> bool:
    """Whether ``module`` carries prunekit's masks (a buffer and the pre-hook that keeps
    them): a Pruner's, or a copy's of a pruned model."""
    return MASK_BUFFER in module._buffers and any(
        isinstance(h, KeepMasked) for h in module._forward_pre_hooks.values()
    )


def detach(module: nn.Module) -> None:
    """Remove prunekit's buffers and hooks from ``module`` (its weights stay as they are)."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, KeepMasked):
            del module._forward_pre_hooks[key]
    for buffer in (MASK_BUFFER, BIAS_MASK_BUFFER):
        module._buffers.pop(buffer, None)
    for name in ("weight", "bias"):
        tensor = getattr(module, name, None)
        if not isinstance(tensor, Tensor):
            continue
        handle = _own_hook(tensor)
        if handle is not None:
            handle.remove()
        if hasattr(tensor, _HOOKED):
            delattr(tensor, _HOOKED)


def attached_masks(model: nn.Module) -> Iterator[tuple[str, nn.Module, Tensor]]:
    """``(name, module, mask)`` for every module of ``model`` that carries prunekit's masks."""
    for name, module in model.named_modules():
        if carries_masks(module):
            mask = module._buffers[MASK_BUFFER]
            assert isinstance(mask, Tensor)
            yield name, module, mask


@dataclass(frozen=True)
class HeldMask:
    """A module's prunekit masks, taken before they are stripped, to put them back."""

    module: nn.Module
    mask: Tensor
    bias_mask: Tensor | None


def held_masks(model: nn.Module) -> list[HeldMask]:
    """Every prunekit mask ``model`` carries, cloned (see :func:`put_back`)."""
    held = []
    for _, module, mask in attached_masks(model):
        bias_mask = module._buffers.get(BIAS_MASK_BUFFER)
        held.append(
            HeldMask(module, mask.clone(), None if bias_mask is None else bias_mask.clone())
        )
    return held


def put_back(held: list[HeldMask]) -> None:
    """Attach masks :func:`held_masks` took again: a failed operation that stripped them
    leaves the model as it found it."""
    for item in held:
        detach(item.module)
        attach(item.module, item.mask, bias=item.bias_mask is not None)
        if item.bias_mask is not None:
            item.module._buffers[BIAS_MASK_BUFFER] = item.bias_mask.clone()


def strip_masks(model: nn.Module) -> list[str]:
    """Remove every prunekit mask from ``model`` (a copy of a pruned model, or one saved while
    a Pruner was attached), baking the masks into the weights first: the model is a plain
    model whose removed weights are zero. Returns the names of the modules stripped."""
    stripped = []
    with torch.no_grad():
        for name, module, mask in list(attached_masks(model)):
            weight = getattr(module, "weight", None)
            if isinstance(weight, Tensor):
                weight.mul_(mask)
            bias_mask = module._buffers.get(BIAS_MASK_BUFFER)
            bias = getattr(module, "bias", None)
            if isinstance(bias_mask, Tensor) and isinstance(bias, Tensor):
                bias.mul_(bias_mask)
            detach(module)
            stripped.append(name)
    return stripped
