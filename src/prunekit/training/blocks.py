"""A model's repeated blocks: the decoder layers sequential calibration prunes one by one.

Found from the module tree: the ``ModuleList`` (or ``Sequential``) of two or more modules of
one class that holds the most selected ops (``model.layers`` of a LLaMA, ``transformer.h``
of a GPT-2, ``encoder.layer`` of a BERT); or named by the config's ``sequential_blocks``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from prunekit.errors import CalibrationError
from prunekit.naming import close_matches


@dataclass(frozen=True)
class Blocks:
    """The repeated blocks at ``path``, in the order the model runs them."""

    path: str
    modules: tuple[nn.Module, ...]

    @property
    def names(self) -> list[str]:
        return [f"{self.path}.{i}" if self.path else str(i) for i in range(len(self.modules))]

    def owner(self, op: str) -> int | None:
        """The index of the block op ``op`` (a qualified module name) lies in, or None."""
        prefix = f"{self.path}." if self.path else ""
        if not op.startswith(prefix):
            return None
        head = op[len(prefix) :].split(".", 1)[0]
        return int(head) if head.isdigit() and int(head) < len(self.modules) else None


def _stacks(model: nn.Module) -> dict[str, nn.Module]:
    """Every list of two or more modules of one class, by qualified name."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            children = list(module.children())
            if len(children) >= 2 and len({type(c) for c in children}) == 1:
                found[name] = module
    return found


def find_blocks(model: nn.Module, ops: Iterable[str], named: str | None) -> Blocks | None:
    """The model's repeated blocks (``named``: the dotted name of their list), or None when
    no list of same-class modules holds a selected op."""
    stacks = _stacks(model)
    if named is not None:
        return Blocks(named, tuple(_named_stack(model, named, stacks).children()))
    selected = list(ops)
    best: tuple[int, int] = (0, 0)
    chosen: Blocks | None = None
    for name, stack in stacks.items():
        blocks = Blocks(name, tuple(stack.children()))
        held = sum(blocks.owner(op) is not None for op in selected)
        if (held, len(blocks.modules)) > best:
            best, chosen = (held, len(blocks.modules)), blocks
    return chosen


def _named_stack(model: nn.Module, named: str, stacks: dict[str, nn.Module]) -> nn.Module:
    try:
        module = model.get_submodule(named)
    except AttributeError:
        module = None
    if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) >= 1:
        return module
    hint = close_matches(named, list(stacks))
    raise CalibrationError(
        f"sequential_blocks: {named!r} is not a ModuleList or Sequential of the model's blocks"
        + (f"; did you mean {hint[0]!r}?" if hint else "")
        + f" (lists of repeated blocks in this model: {', '.join(map(repr, stacks)) or 'none'})"
    )
