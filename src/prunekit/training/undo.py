"""What a calibration run changed, kept until it succeeds: a failure puts every weight and
mask back, so the model is never left half pruned.

Sequential pruning must change block ``i`` before block ``i + 1`` is calibrated (its inputs
are block ``i``'s pruned outputs), so it cannot compute everything first and apply after.
Instead every change is recorded just before it is made: for a mask applied to a weight, the
values it removes (the weight's other entries are untouched); for a weight a criterion
rewrites (SparseGPT), the whole weight. The records live on the CPU, or in a directory (for a
model whose removed values do not fit in memory beside it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from prunekit.masks.modules import MASK_BUFFER, detach


@dataclass
class _Record:
    module: nn.Module
    saved: dict[str, Tensor | None] | Path  # {"mask", "values"}, or the file that holds them
    previous_mask: Tensor | None  # the module's mask before (None: it had none)


class Undo:
    """Records of changes to ops' weights and masks, undone in reverse order on failure.
    ``directory``: keep the saved values (and masks) in files there instead of memory."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = None if directory is None else Path(directory)
        self._records: list[_Record] = []

    def masked(self, module: nn.Module, mask: Tensor) -> None:
        """``mask`` is about to be applied to ``module``'s weight: keep what it removes."""
        weight = _weight(module)
        gone = weight.detach()[~mask.to(weight.device)].to("cpu", copy=True)
        self._keep(module, mask.to("cpu", copy=True), gone)

    def rewritten(self, module: nn.Module) -> None:
        """``module``'s weight is about to be rewritten: keep all of it."""
        self._keep(module, None, _weight(module).detach().to("cpu", copy=True))

    def _keep(self, module: nn.Module, mask: Tensor | None, values: Tensor) -> None:
        previous = getattr(module, MASK_BUFFER, None)
        saved: dict[str, Tensor | None] | Path = {"mask": mask, "values": values}
        if self.directory is not None:
            path = self.directory / f"undo-{len(self._records)}.pt"
            torch.save(saved, path)
            saved = path
        self._records.append(
            _Record(
                module, saved, previous.detach().clone() if isinstance(previous, Tensor) else None
            )
        )

    def rollback(self) -> None:
        """Put every recorded weight and mask back as it was (latest change first)."""
        with torch.no_grad():
            for record in reversed(self._records):
                saved = record.saved
                if isinstance(saved, Path):
                    saved = torch.load(saved, weights_only=True)
                _restore(record.module, saved["mask"], saved["values"])
                current = getattr(record.module, MASK_BUFFER, None)
                if record.previous_mask is None and isinstance(current, Tensor):
                    detach(record.module)
                elif record.previous_mask is not None and isinstance(current, Tensor):
                    current.copy_(record.previous_mask.to(current.device))
        self.forget()

    def forget(self) -> None:
        """The run succeeded: drop the records (and their files)."""
        for record in self._records:
            if isinstance(record.saved, Path):
                record.saved.unlink(missing_ok=True)
        self._records.clear()


def _restore(module: nn.Module, mask: Tensor | None, values: Tensor | None) -> None:
    """Put saved values back: the whole weight, or the entries ``mask`` removed."""
    assert values is not None
    weight = _weight(module)
    if mask is None:
        weight.copy_(values.to(weight.device))
    else:
        weight[~mask.to(weight.device)] = values.to(weight.device, weight.dtype)


def _weight(module: nn.Module) -> Tensor:
    weight = getattr(module, "weight", None)
    assert isinstance(weight, Tensor)
    return weight
